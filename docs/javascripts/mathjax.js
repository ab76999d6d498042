// MathJax configuration for pymdownx.arithmatex (generic mode); MathJax itself is served with the docs
// (javascripts/mathjax/tex-svg-full.js), so formulas render with no network.
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"]],
    displayMath: [["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true,
  },
  options: {
    ignoreHtmlClass: ".*|",
    processHtmlClass: "arithmatex",
  },
};

// mkdocs-material announces each page on document$ (the first load, and every page that instant loading
// brings in): typeset it again once MathJax has started. Only typesetClear, texReset and typesetPromise are
// called: they exist whatever the output jax (clearCache is the HTML output's alone; this is the SVG one).
document$.subscribe(() => {
  if (!MathJax.startup) return; // MathJax did not load: the formulas stay as TeX
  MathJax.startup.promise.then(() => {
    MathJax.typesetClear();
    MathJax.texReset();
    return MathJax.typesetPromise();
  });
});

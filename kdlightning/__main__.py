"""``python -m kdlightning``: the ``kdl`` command."""

from kdlightning.cli import main

if __name__ == "__main__":
    main()

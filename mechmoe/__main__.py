"""``python -m mechmoe``: the same command line as the ``mechmoe`` script."""

from mechmoe.cli import main

if __name__ == "__main__":
    main()

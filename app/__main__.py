"""`python -m app` is the `modelgate` command (used by `modelgate up` to start its children)."""

from app.cli import main

main()

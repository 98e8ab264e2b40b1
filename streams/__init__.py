"""Stream processing: the Faust worker, decisions, the CLI."""

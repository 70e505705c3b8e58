"""`gaedit` subcommands that live outside their stage: one module per subcommand (parsing, printing).
cli.py imports a module only when its subcommand runs."""

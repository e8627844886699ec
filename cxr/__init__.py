"""The `cxr` command line: one console command whose subcommands live in the packages they drive."""

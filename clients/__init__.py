"""Client library and the `megaclass` command line."""

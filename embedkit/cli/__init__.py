"""The `embedkit` command line: thin click commands over the library."""

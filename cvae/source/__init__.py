"""Where the data comes from: the `check_source` and `download` stages, over HTTP, from a folder
or an archive, or drawn by the built-in sets."""

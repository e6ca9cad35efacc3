"""From the command line to objects: the config schema, building objects from it, and the one-paragraph
messages for a command line or a config that cannot be used."""

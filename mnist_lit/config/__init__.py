"""From the command line to objects: the config schema, building objects from it, and the one-paragraph
messages for a command line or a config that cannot be used."""

from mnist_lit.config.building import register_resolvers

# a run's recorded config is resolved wherever it is read (evaluate, predict, export, a teacher), not only
# under Hydra: ${datamodule:...} is known as soon as the config package is
register_resolvers()

"""Command-line overrides as text: the key an override sets."""


def override_key(override: str) -> str:
    """`+model.optimizer.foo=1` -> `model.optimizer.foo`; `~seed` -> `seed`; `data=mnist` -> `data`."""
    return override.split("=", 1)[0].lstrip("+~")

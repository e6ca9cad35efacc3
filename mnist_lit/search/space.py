"""Hydra's override grammar -> Optuna distributions, as the hydra-optuna-sweeper plugin mapped them.

- `choice(a, b, c)` and `shuffle(range(...))`: categorical
- `range(start, stop, step)`: int (or float) with that step, stop excluded as in Hydra
- `interval(low, high)`: float (Hydra parses its ends as floats); `tag(log, interval(...))`: log scale
- anything else (`data.root=x`): a fixed value, passed to every trial as it is
"""

from __future__ import annotations

from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep, Transformer


class SearchSpaceError(ValueError):
    """An override the search cannot turn into a distribution."""


def distribution(override: Override):
    """The Optuna distribution of a sweep override, or its value as a string for a fixed one."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if not override.is_sweep_override():
        return override.get_value_element_as_str()
    value = override.value()
    key = override.get_key_element()
    if isinstance(value, ChoiceSweep) or (isinstance(value, RangeSweep) and value.shuffle):
        choices = list(override.sweep_iterator(transformer=Transformer.encode))
        bad = [c for c in choices if not isinstance(c, (str, int, float, bool, type(None)))]
        if bad:
            raise SearchSpaceError(f"{key}: choice() takes plain values (str, int, float, bool), not {bad}")
        return CategoricalDistribution(choices)
    if isinstance(value, RangeSweep):
        values = list(override.sweep_iterator())
        if not values:
            raise SearchSpaceError(f"{override.input_line} is empty: its stop must come after its start")
        if any(isinstance(v, float) for v in (value.start, value.stop, value.step)):
            return FloatDistribution(values[0], values[-1], step=value.step)
        return IntDistribution(int(values[0]), int(values[-1]), step=int(value.step))
    if isinstance(value, IntervalSweep):  # Hydra makes both ends floats: whole numbers come from range()
        return FloatDistribution(value.start, value.end, log="log" in value.tags)
    raise SearchSpaceError(f"{key}: {override.get_value_element_as_str()} is not supported by the Optuna "
                           "search; use choice(...), range(...), interval(...) or tag(log, interval(...))")


def parse(arguments: list[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """Overrides -> (search space: key -> distribution, fixed: key -> value string). A key given twice keeps
    the last (the command line comes after conf/hparams_search/*.yaml's params)."""
    from optuna.distributions import BaseDistribution

    space: dict[str, Any] = {}
    fixed: dict[str, str] = {}
    try:
        parsed = OverridesParser.create().parse_overrides(arguments)
    except Exception as err:  # Hydra's OverrideParseException, with the position of the mistake
        raise SearchSpaceError(str(err)) from None
    for override in parsed:
        key = override.get_key_element()
        space.pop(key, None)
        fixed.pop(key, None)
        try:
            value = distribution(override)
        except SearchSpaceError:
            raise
        except ValueError as err:  # Optuna's own checks: low <= high, low > 0 on a log scale
            reason = str(err).rstrip(".")
            raise SearchSpaceError(f"{override.input_line}: {reason}; give the lower end first, and a "
                                   "positive one on a log scale") from None
        if isinstance(value, BaseDistribution):
            space[key] = value
        else:
            fixed[key] = value
    return space, fixed


def combinations(space: dict[str, Any]) -> list[dict[str, Any]]:
    """Every combination of a space's values, in the order of its keys and their values; each distribution
    must be a list of values (choice, a comma list, range), not an interval."""
    import itertools

    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    values = {}
    for key, dist in space.items():
        if isinstance(dist, CategoricalDistribution):
            values[key] = list(dist.choices)
        elif isinstance(dist, (IntDistribution, FloatDistribution)) and dist.step and not dist.log:
            count = round((dist.high - dist.low) / dist.step) + 1
            values[key] = [dist.low + i * dist.step for i in range(count)]
        else:
            raise SearchSpaceError(f"{key}: a grid runs lists of values, not an interval: list them "
                                   f"({key}=a,b,c, choice(...) or range(...)), or search the interval with "
                                   "hparams_search=optuna")
    return [dict(zip(values, combo, strict=True)) for combo in itertools.product(*values.values())]


def to_override(key: str, value: Any) -> str:
    """A sampled value as a command-line override (floats in full precision, null for None)."""
    if value is None:
        return f"{key}=null"
    if isinstance(value, float):
        return f"{key}={value!r}"
    return f"{key}={value}"

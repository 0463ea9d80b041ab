"""Prices of known provider models from a maintained price map: pydantic's genai-prices (a snapshot of its
data ships in the wheel; nothing is fetched). A rung's `price` in the catalogue always wins; a rung without one
takes the map's price for its model, matched by the endpoint's URL (api.openai.com, api.anthropic.com, ...)
and else by the model name alone, so a self-hosted endpoint serving an open model should name its own price.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache


@dataclass(frozen=True)
class MapPrice:
    input_per_1m: float
    output_per_1m: float
    source: str  # e.g. "genai-prices 0.2.3: openai gpt-4o-mini"


@cache
def provider_price(model: str, base_url: str | None = None) -> MapPrice | None:
    """USD per million input and output tokens (the base tier) of a model the price map knows, else None."""
    try:
        import genai_prices
        from genai_prices import Usage, calc_price
    except ImportError:
        return None
    attempts = ([{"provider_api_url": base_url}] if base_url else []) + [{}]
    for where in attempts:
        try:
            given = calc_price(Usage(input_tokens=1_000_000), model, **where)
            taken = calc_price(Usage(output_tokens=1_000_000), model, **where)
        except LookupError:
            continue
        return MapPrice(float(given.total_price), float(taken.total_price),
                        f"genai-prices {genai_prices.__version__}: {given.provider.id} {given.model.id}")
    return None

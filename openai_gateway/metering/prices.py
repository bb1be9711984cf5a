"""What a model costs and what an answer cost, in integer micro-dollars (pure: no aiohttp).

Money is held as integers so budgets add up exactly and fit memcached's integer `incr`:
- an amount is in micro-dollars (µ$): 1 US dollar = 1_000_000;
- a price is in micro-dollars per 1M tokens: $0.15 per 1M tokens = 150_000.
Then the cost of N tokens at price P is N * P / 1_000_000 µ$, computed exactly and rounded UP
once per answer: the gateway over-counts by less than 1 µ$ per answer and never under-counts, and
an answer that used priced tokens never costs 0.

How OpenAI bills an answer (its `usage`, read by policy.usage), and how `cost` follows it:
- input tokens: `prompt_tokens` (chat, completions, embeddings) or `input_tokens` (responses,
  images, realtime); the parts the details name are included in that count: cached tokens at
  the cached-input price, audio tokens at `audio_input`, image tokens at `image_input`, the
  rest at `input`; cached audio at `cached_audio_input` where the usage says which cached
  tokens were audio (realtime does);
- output tokens: `completion_tokens` / `output_tokens`, reasoning tokens included (they are
  billed as output although the client never sees them), audio tokens at `audio_output`;
- embeddings have input only.
A row without audio or image rates bills those tokens at its text rates: chat models bill the
images they read as input tokens.
Not modelled: Batch/Flex/Priority tiers, regional-processing uplifts, hosted-tool fees, cache
writes, and the long-context rate some models charge above 272K input tokens (the default
`validation.max_input_chars` keeps prompts far below that).
Voice and picture models may also bill minutes, characters or images: a `Price` carries those
rates in `units` (unit_prices.UnitRates), and units.py reserves and settles them.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from decimal import ROUND_CEILING, Decimal, InvalidOperation
from types import MappingProxyType

from ..config.limits import MICRO  # micro-dollars in a dollar, defined once
from ..policy.media import SNAPSHOT
from ..policy.usage import Usage  # the one definition of an answer's tokens
from .unit_prices import AS_OF, MEDIA_ROWS, NO_UNITS, UnitRates

#: Prices are per this many tokens, as OpenAI publishes them.
PER_TOKENS = 1_000_000
#: Label for spend on a model the price table does not know (keeps metric labels bounded).
OTHER = "other"
#: A dollar amount as `[prices]` or code gives it.
Dollars = int | float | str | Decimal


def micro_from_usd(dollars: int | float | str | Decimal) -> int:
    """US dollars (a TOML number or a decimal string) to micro-dollars, rounded up.

    Rounding up means a price with more than six decimals is never under-charged. Raises
    `ValueError` for anything that is not a finite number >= 0 (booleans included).
    """
    if isinstance(dollars, bool) or not isinstance(dollars, int | float | str | Decimal):
        raise ValueError(f"expected a number of US dollars, got {type(dollars).__name__}")
    try:
        # str() first: a float's shortest repr (0.075), not its binary expansion.
        value = Decimal(str(dollars).strip())
    except InvalidOperation:
        raise ValueError(f"expected a number of US dollars, got {str(dollars)[:40]!r}") from None
    if not value.is_finite() or value < 0:
        raise ValueError(f"expected a number of US dollars >= 0, got {str(dollars)[:40]}")
    return int((value * MICRO).to_integral_value(rounding=ROUND_CEILING))


def usd(micro: int) -> str:
    """Micro-dollars as a dollar string with six decimals ("0.012345"), integer arithmetic only.

    Also renders a price (micro-dollars per 1M tokens) as dollars per 1M tokens.
    """
    sign = "-" if micro < 0 else ""
    whole, frac = divmod(abs(micro), MICRO)
    return f"{sign}{whole}.{frac:06d}"


#: `audio_input`, `image_input`, `audio_output` and `cached_audio_input` left at this take
#: the text rate.
TEXT_RATE = -1


@dataclass(frozen=True, slots=True)
class Price:
    """One model's price, in integer micro-dollars per 1M tokens (see `from_usd`).

    `cached_input` is what a prompt-cache hit costs; it is never more than `input`. `as_of` is
    the date the figures were checked (YYYY-MM-DD), "" for the operator's own rows.
    `audio_input` and `image_input` default to `input`, `audio_output` to `output`,
    `cached_audio_input` to `cached_input` (realtime models price cached audio apart: on
    gpt-realtime-mini it is five times cached text).
    `reasoning`: the model reasons before it writes, in tokens billed as output that a stream
    never shows, so a stream stopped early may have cost its whole output cap.
    `units`: what the model bills besides tokens (minutes, characters, images), if anything.
    """

    input: int
    cached_input: int
    output: int
    as_of: str = ""
    audio_input: int = TEXT_RATE
    image_input: int = TEXT_RATE
    audio_output: int = TEXT_RATE
    reasoning: bool = False
    cached_audio_input: int = TEXT_RATE
    units: UnitRates = NO_UNITS

    def __post_init__(self) -> None:
        for name, text in (("audio_input", self.input), ("image_input", self.input),
                           ("audio_output", self.output)):
            if getattr(self, name) == TEXT_RATE:
                object.__setattr__(self, name, text)  # frozen: set once, while being built
        if self.cached_audio_input == TEXT_RATE and type(self.cached_input) is type(
                self.audio_input) is int:  # else the checks below name the bad one
            object.__setattr__(self, "cached_audio_input",
                               min(self.cached_input, self.audio_input))
        for name in ("input", "cached_input", "output", "audio_input", "image_input",
                     "audio_output", "cached_audio_input"):
            value = getattr(self, name)
            # Ints only: a float here almost certainly means dollars passed where µ$ belong.
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0 (micro-dollars per 1M tokens), "
                                 f"got {value!r}; use Price.from_usd for dollars")
        if self.cached_input > self.input:
            raise ValueError(f"cached_input ({usd(self.cached_input)}) is more than input "
                             f"({usd(self.input)}) dollars per 1M tokens")
        if self.cached_audio_input > self.audio_input:
            raise ValueError(f"cached_audio_input ({usd(self.cached_audio_input)}) is more than "
                             f"audio_input ({usd(self.audio_input)}) dollars per 1M tokens")
        u = self.units
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in (
                u.per_minute, u.per_million_chars, *(v for _, v in u.per_image),
                *(v for _, v in u.image_tokens))):
            raise ValueError(f"unit rates must be ints >= 0, got {u!r}")

    @classmethod
    def from_usd(cls, *, input: Dollars, output: Dollars, cached_input: Dollars | None = None,
                 as_of: str = "", audio_input: Dollars | None = None,
                 image_input: Dollars | None = None, audio_output: Dollars | None = None,
                 reasoning: bool = False, cached_audio_input: Dollars | None = None,
                 per_minute: Dollars | None = None, per_million_chars: Dollars | None = None,
                 per_image: Mapping[str, Dollars] | None = None,
                 image_tokens: Mapping[str, int] | None = None) -> Price:
        """Build from US dollars per 1M tokens, as `[prices]` writes them.

        `cached_input`, `audio_input` and `image_input` default to `input` (a model without a
        cache discount, or that bills audio and images as text), `audio_output` to `output`,
        `cached_audio_input` to `cached_input`. `per_minute`, `per_million_chars` and
        `per_image` (by "quality/size") are US dollars per minute, per 1M characters and per
        image; `image_tokens` (by "quality/size") are image output tokens (unit_prices).
        Raises `ValueError` naming the field for a negative or non-numeric value.
        """
        amounts = {}
        for name, value in (("input", input), ("output", output),
                            ("cached_input", input if cached_input is None else cached_input),
                            ("audio_input", audio_input), ("image_input", image_input),
                            ("audio_output", audio_output),
                            ("cached_audio_input", cached_audio_input)):
            try:
                amounts[name] = TEXT_RATE if value is None else micro_from_usd(value)
            except ValueError as exc:
                raise ValueError(f"{name}: {exc} per 1M tokens") from None
        units = unit_rates(per_minute=per_minute, per_million_chars=per_million_chars,
                           per_image=per_image, image_tokens=image_tokens)
        return cls(as_of=as_of, reasoning=reasoning, units=units, **amounts)


def unit_rates(*, per_minute: Dollars | None = None, per_million_chars: Dollars | None = None,
               per_image: Mapping[str, Dollars] | None = None,
               image_tokens: Mapping[str, int] | None = None) -> UnitRates:
    """`UnitRates` from US dollars (see `Price.from_usd`); ValueError naming the field."""
    def micro(name: str, value) -> int:
        try:
            return micro_from_usd(value)
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None

    if not (per_minute or per_million_chars or per_image or image_tokens):
        return NO_UNITS
    return UnitRates(
        per_minute=0 if per_minute is None else micro("per_minute", per_minute),
        per_million_chars=(0 if per_million_chars is None
                           else micro("per_million_chars", per_million_chars)),
        per_image=tuple(sorted((k, micro(f"per_image.{k}", v))
                               for k, v in (per_image or {}).items())),
        image_tokens=tuple(sorted((image_tokens or {}).items())))


def _ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


def cost(price: Price, usage: Usage) -> int:
    """Micro-dollars an answer cost: each part of its input and output at its own price.

    Cached audio the usage names (`cached_audio_input`) is billed at `cached_audio_input`;
    the other cached tokens are not always said to be text, image or audio, so they are taken
    from the parts whose cache discount is smallest first: never less than OpenAI bills. Parts
    larger than their totals are clamped. Exact, rounded up to the next micro-dollar once per
    answer.
    """
    if not (usage.audio_input or usage.image_input or usage.cached_input
            or usage.audio_output or usage.cached_audio_input):
        # Text in, text out (most answers): the same sum without sorting the parts.
        return _ceil_div(max(usage.input, 0) * price.input + max(usage.output, 0) * price.output,
                         PER_TOKENS)
    tin = max(usage.input, 0)
    audio = min(max(usage.audio_input, 0), tin)
    image = min(max(usage.image_input, 0), tin - audio)
    cached = min(max(usage.cached_input, 0), tin)
    cached_audio = min(max(usage.cached_audio_input, 0), audio, cached)
    total = cached_audio * price.cached_audio_input
    cached -= cached_audio
    parts = ((price.input, price.cached_input, tin - audio - image),
             (price.image_input, price.cached_input, image),
             (price.audio_input, price.cached_audio_input, audio - cached_audio))
    for full, discounted, tokens in sorted(parts, key=lambda p: (p[0] - p[1], p[0])):
        hit = min(cached, tokens)
        cached -= hit
        total += hit * discounted + (tokens - hit) * full
    tout = max(usage.output, 0)
    audio_out = min(max(usage.audio_output, 0), tout)
    total += (tout - audio_out) * price.output + audio_out * price.audio_output
    return _ceil_div(total, PER_TOKENS)


def estimate(price: Price, input_tokens: int, max_output_tokens: int, *, image_tokens: int = 0,
             audio_tokens: int = 0) -> int:
    """Micro-dollars to reserve before forwarding: the most the answer can cost.

    `input_tokens` counts every input token, the `image_tokens` and `audio_tokens` among them
    (as a usage reports them). Every input token at its full price (whether the prompt cache
    will hit is not known yet), images at `image_input`, audio at `audio_input`, and every
    allowed output token at the dearer of `output` and `audio_output` (an answer may be
    spoken); rounded up.
    """
    tin = max(input_tokens, 0)
    audio = min(max(audio_tokens, 0), tin)
    image = min(max(image_tokens, 0), tin - audio)
    total = ((tin - audio - image) * price.input + image * price.image_input
             + audio * price.audio_input
             + max(max_output_tokens, 0) * max(price.output, price.audio_output))
    return _ceil_div(total, PER_TOKENS)


def table(rows: Mapping[str, object]) -> PriceTable:
    """The shipped table with the operator's `[prices]` rows laid over it (each row's fields
    are `configured`'s keyword arguments)."""
    return PriceTable({model: configured(model, **{f.name: getattr(row, f.name)
                                                  for f in fields(row)})  # type: ignore[arg-type]
                       for model, row in rows.items()})


def configured(model: str, *, input: float, cached_input: float, output: float,
               audio_input: float | None = None, image_input: float | None = None,
               audio_output: float | None = None, reasoning: bool | None = None,
               cached_audio_input: float | None = None, per_minute: float | None = None,
               per_million_chars: float | None = None,
               per_image: Mapping[str, float] | None = None,
               image_tokens: Mapping[str, int] | None = None) -> Price:
    """An operator's `[prices]` row (US dollars per 1M tokens, and per unit). `reasoning`
    unset keeps what the shipped table says of the model (or of its family, for a dated
    snapshot), else False; so does `image_tokens` when the row gives none (the output tokens
    an image costs are a fact of the model, not of its price)."""
    shipped = PriceTable(defaults=DEFAULT_PRICES).price_for(model)
    if reasoning is None:
        reasoning = shipped.reasoning if shipped is not None else False
    if not image_tokens and shipped is not None and shipped.units.image_tokens:
        image_tokens = dict(shipped.units.image_tokens)
    return Price.from_usd(input=input, cached_input=cached_input, output=output,
                          audio_input=audio_input, image_input=image_input,
                          audio_output=audio_output, reasoning=reasoning,
                          cached_audio_input=cached_audio_input, per_minute=per_minute,
                          per_million_chars=per_million_chars, per_image=per_image,
                          image_tokens=image_tokens)


class PriceTable:
    """The shipped defaults with the operator's `[prices]` laid over them (overrides and adds).

    A model name finds its row by exact name, else by its name without a snapshot date
    (`gpt-4o-mini-2024-07-18` -> `gpt-4o-mini`). There is deliberately no prefix matching:
    variants priced apart from their base (`o1-pro` is ten times `o1`, `gpt-4o-mini` is not
    `gpt-4o`, `gpt-4o-realtime-preview` is not `gpt-4o`) would otherwise be silently under-priced;
    an unknown variant gets `None`, and the gateway refuses it while a dollar budget applies.
    """

    #: Resolved names kept (clients choose model names, so the memo must be bounded).
    CACHE_SIZE = 1024

    def __init__(self, overrides: Mapping[str, Price] | None = None, *,
                 defaults: Mapping[str, Price] | None = None):
        self._rows: dict[str, Price] = dict(DEFAULT_PRICES if defaults is None else defaults)
        self._rows.update(overrides or {})
        # OrderedDict: O(1) eviction of the oldest (a dict would rescan the holes it leaves).
        self._memo: OrderedDict[str, tuple[str, Price] | None] = OrderedDict()

    def price_for(self, model: str) -> Price | None:
        """The model's price, or None when the table has no row for it."""
        found = self._resolve(model)
        return None if found is None else found[1]

    def label_for(self, model: str) -> str:
        """The row name that prices `model` (its family), or "other": a bounded metric label."""
        found = self._resolve(model)
        return OTHER if found is None else found[0]

    def __contains__(self, model: object) -> bool:
        return isinstance(model, str) and self._resolve(model) is not None

    def __len__(self) -> int:
        return len(self._rows)

    def __iter__(self) -> Iterator[str]:
        return iter(self._rows)

    def items(self) -> Iterator[tuple[str, Price]]:
        """Rows sorted by name (for `--check` and documentation)."""
        return iter(sorted(self._rows.items()))

    def _resolve(self, model: str) -> tuple[str, Price] | None:
        if not isinstance(model, str):
            return None
        memo = self._memo
        if model in memo:
            return memo[model]
        found = self._lookup(model)
        if len(memo) >= self.CACHE_SIZE:
            memo.popitem(last=False)  # oldest first
        memo[model] = found
        return found

    def _lookup(self, model: str) -> tuple[str, Price] | None:
        for name in (model, SNAPSHOT.sub("", model)):
            row = self._rows.get(name)
            if row is not None:
                return name, row
        return None


def _row(input: str, cached_input: str, output: str, as_of: str, *,
         reasoning: bool = False) -> Price:
    return Price.from_usd(input=input, cached_input=cached_input, output=output, as_of=as_of,
                          reasoning=reasoning)


def _voice(text: tuple[str, str, str], audio: tuple[str, str, str], image: str | None,
           as_of: str, *, reasoning: bool = False) -> Price:
    """A realtime model: (input, cached input, output) for text and for audio, image input."""
    return Price.from_usd(input=text[0], cached_input=text[1], output=text[2],
                          audio_input=audio[0], cached_audio_input=audio[1],
                          audio_output=audio[2], image_input=image, as_of=as_of,
                          reasoning=reasoning)


# OpenAI's standard-tier list prices, US dollars per 1M tokens: input, cached input, output,
# and the date they were checked. Checked 2026-12-01 against (the gateway itself never reads a
# pricing page): [O] OpenAI's model pages (developers.openai.com/api/docs/models/<id>) where a
# copy was at hand; [L] LiteLLM's model_prices_and_context_window.json, which mirrors OpenAI's
# pricing page; [G] GitHub Docs' Copilot model price table; [R] other dated readings of OpenAI's
# pricing page (May-November 2026). Every row's input and output prices agree in at least two
# of these; cached-input prices come from [L] and agree with [O], [G] or [R] where those list
# them. Left out: models whose price moved during 2026 (gpt-5.6-*, gpt-6-*) and models that bill
# cache writes; add them under [prices] with the figures of your own invoice.
# A model with no cache discount ("-" on OpenAI's page) has cached_input = input.
# reasoning=True: the o-series and the GPT-5 family think in hidden, billed output tokens.
DEFAULT_PRICES: Mapping[str, Price] = MappingProxyType({
    # GPT-4o and GPT-4.1 families [L][R]; gpt-4.1 also [G]
    "gpt-4o": _row("2.50", "1.25", "10.00", "2026-12-01"),
    "gpt-4o-2024-05-13": _row("5.00", "5.00", "15.00", "2026-12-01"),  # the first snapshot
    "gpt-4o-mini": _row("0.15", "0.075", "0.60", "2026-12-01"),
    "gpt-4.1": _row("2.00", "0.50", "8.00", "2026-12-01"),
    "gpt-4.1-mini": _row("0.40", "0.10", "1.60", "2026-12-01"),
    "gpt-4.1-nano": _row("0.10", "0.025", "0.40", "2026-12-01"),
    # o-series reasoning models [L][R]
    "o1": _row("15.00", "7.50", "60.00", "2026-12-01", reasoning=True),
    "o1-pro": _row("150.00", "150.00", "600.00", "2026-12-01", reasoning=True),
    "o3": _row("2.00", "0.50", "8.00", "2026-12-01", reasoning=True),
    "o3-pro": _row("20.00", "20.00", "80.00", "2026-12-01", reasoning=True),
    "o3-mini": _row("1.10", "0.55", "4.40", "2026-12-01", reasoning=True),
    "o4-mini": _row("1.10", "0.275", "4.40", "2026-12-01", reasoning=True),
    # GPT-5 family [L][R]; gpt-5-nano also [O]; gpt-5-mini and gpt-5.2 also [G]
    "gpt-5": _row("1.25", "0.125", "10.00", "2026-12-01", reasoning=True),
    "gpt-5-mini": _row("0.25", "0.025", "2.00", "2026-12-01", reasoning=True),
    "gpt-5-nano": _row("0.05", "0.005", "0.40", "2026-12-01", reasoning=True),
    "gpt-5-pro": _row("15.00", "15.00", "120.00", "2026-12-01", reasoning=True),
    "gpt-5.1": _row("1.25", "0.125", "10.00", "2026-12-01", reasoning=True),
    "gpt-5.2": _row("1.75", "0.175", "14.00", "2026-12-01", reasoning=True),
    # GPT-5.4 and 5.5 [L][R]; mini and nano input also [O]. gpt-5.4 and gpt-5.5 bill prompts
    # over 272K input tokens at a higher rate, which this table does not model.
    "gpt-5.4": _row("2.50", "0.25", "15.00", "2026-12-01", reasoning=True),
    "gpt-5.4-mini": _row("0.75", "0.075", "4.50", "2026-12-01", reasoning=True),
    "gpt-5.4-nano": _row("0.20", "0.02", "1.25", "2026-12-01", reasoning=True),
    "gpt-5.5": _row("5.00", "0.50", "30.00", "2026-12-01", reasoning=True),
    # Embeddings: input only [L][R]; text-embedding-3-* also [O]
    "text-embedding-3-small": _row("0.02", "0.02", "0", "2026-12-01"),
    "text-embedding-3-large": _row("0.13", "0.13", "0", "2026-12-01"),
    "text-embedding-ada-002": _row("0.10", "0.10", "0", "2026-12-01"),
    # Moderation is free [L], as OpenAI's moderation guide says
    "omni-moderation-latest": _row("0", "0", "0", "2026-12-01"),
    "omni-moderation-2024-09-26": _row("0", "0", "0", "2026-12-01"),
    # Realtime models, text and audio rates (input, cached input, output) and image input;
    # dated names (gpt-realtime-2025-08-28, gpt-realtime-mini-2025-10-06 and -2025-12-15) find
    # their family. [O] model pages of gpt-realtime (compare page: text), -1.5, -2, -2.1,
    # -2.1-mini, gpt-4o-mini-realtime-preview; audio rates of gpt-realtime also in OpenAI's
    # cookbook (realtime transcription notebook). gpt-realtime-mini: text input [O] (the
    # 2.1-mini page's comparison row), cached text and output [L]; its audio and image rates
    # as gpt-realtime-2.1-mini's, which [R] and other dated price tables repeat. Cached audio
    # has its own rate: on the mini models it is five times cached text.
    "gpt-realtime": _voice(("4.00", "0.40", "16.00"), ("32.00", "0.40", "64.00"), "5.00",
                           "2026-12-06"),
    "gpt-realtime-1.5": _voice(("4.00", "0.40", "16.00"), ("32.00", "0.40", "64.00"), "5.00",
                               "2026-12-06"),
    "gpt-realtime-2": _voice(("4.00", "0.40", "24.00"), ("32.00", "0.40", "64.00"), "5.00",
                             "2026-12-06", reasoning=True),
    "gpt-realtime-2.1": _voice(("4.00", "0.40", "24.00"), ("32.00", "0.40", "64.00"), "5.00",
                               "2026-12-06", reasoning=True),
    "gpt-realtime-mini": _voice(("0.60", "0.06", "2.40"), ("10.00", "0.30", "20.00"), "0.80",
                                "2026-12-06"),
    "gpt-realtime-2.1-mini": _voice(("0.60", "0.06", "2.40"), ("10.00", "0.30", "20.00"),
                                    "0.80", "2026-12-06", reasoning=True),
    "gpt-4o-mini-realtime-preview": _voice(("0.60", "0.30", "2.40"), ("10.00", "0.30", "20.00"),
                                           None, "2026-12-06"),
    # Voice and pictures: per token and per unit, with their sources, in unit_prices
    **{model: Price.from_usd(**{"input": 0, "output": 0, "as_of": AS_OF, **row})
       for model, row in MEDIA_ROWS.items()},
})

"""Arguments of an emulated function call, taken from the tool's JSON schema and the user's
words, as a model would fill them: "What is the weather in Paris?" with a ``city: string``
parameter calls ``get_weather({"city": "Paris"})``.

No randomness: the same schema and texts give the same arguments. For each property, in
order of preference:

* ``name: value`` or ``name=value`` written in the text;
* for strings, the next unused quoted phrase or proper noun (a capitalised word that does
  not start its sentence: "Paris", "New York"); for numbers, the next unused number; for an
  ``enum``, a value the text mentions;
* the schema's ``default``, first ``examples`` entry, first ``enum`` value or ``minimum``;
* a neutral value of the type (the text's longest word, 1, true, an empty list).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

_QUOTED = re.compile(r"\"([^\"]{1,80})\"|\u201c([^\u201d]{1,80})\u201d|'([^']{1,80})'")
_SENTENCES = re.compile(r"[^.!?\n]+")
_WORD = re.compile(r"[A-Za-z\u00c0-\u024f][\w'\u2019-]*")
# Words never taken as a value on their own: a capitalised "I" or "Use" is no city.
_COMMON_WORDS = (
    "i a an the and or of in on at for to from with by is are was be it this that what "
    "which who how use call please tool function"
)
_STOPWORDS = frozenset(_COMMON_WORDS.split())
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?!\w)(?!\.\d)")


class _Candidates:
    """Values found in the user texts (newest first), each handed out once."""

    def __init__(self, texts: Sequence[str], exclude: set[str]) -> None:
        self.texts = texts
        self.strings = list(self._strings(exclude))
        self.numbers = [m.group() for text in texts for m in _NUMBER.finditer(text)]
        words = [w for text in texts for w in _WORD.findall(text) if w.lower() not in exclude]
        self.longest_word = max(words, key=len, default="")

    def _strings(self, exclude: set[str]) -> Iterator[str]:
        seen: set[str] = set()
        for text in self.texts:
            quoted = [next(g for g in m.groups() if g) for m in _QUOTED.finditer(text)]
            for value in [*quoted, *self._proper_nouns(_QUOTED.sub(" ", text))]:
                if value.lower() not in exclude and value not in seen:
                    seen.add(value)
                    yield value

    @staticmethod
    def _proper_nouns(text: str) -> Iterator[str]:
        for sentence in _SENTENCES.findall(text):
            run: list[str] = []
            end = 0
            # The first word is capitalised because it starts the sentence, not because
            # it names something; punctuation ends a name ("Paris, France" is two).
            for i, match in enumerate(_WORD.finditer(sentence)):
                word, between = match.group(), sentence[end : match.start()]
                end = match.end()
                if run and between.strip():
                    yield " ".join(run)
                    run = []
                if i > 0 and word[0].isupper() and "_" not in word:
                    run.append(word)
                elif run:
                    yield " ".join(run)
                    run = []
            if run:
                yield " ".join(run)

    def written(self, name: str) -> str | None:
        """``value`` from ``name: value`` or ``name = value`` (quoted or one word)."""
        pattern = re.compile(
            rf"\b{re.escape(name)}\s*[:=]\s*(\"[^\"]*\"|'[^']*'|[^\s,;]+)", re.IGNORECASE
        )
        for text in self.texts:
            match = pattern.search(text)
            if match:
                return match.group(1).strip("\"'").rstrip(".!?")
        return None

    def mentions(self, word: str) -> bool:
        pattern = re.compile(rf"(?<!\w){re.escape(word)}(?!\w)", re.IGNORECASE)
        return any(pattern.search(text) for text in self.texts)

    def take_string(self) -> str | None:
        return self.strings.pop(0) if self.strings else None

    def take_number(self) -> str | None:
        return self.numbers.pop(0) if self.numbers else None


def _declared(spec: Mapping[str, Any]) -> Any:
    if "default" in spec:
        return spec["default"]
    examples = spec.get("examples")
    if isinstance(examples, list) and examples:
        return examples[0]
    enum = spec.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    return spec.get("minimum")


def _number(text: str | None, integer: bool) -> int | float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return round(value) if integer else value


def _value(name: str, spec: Any, found: _Candidates) -> Any:
    spec = spec if isinstance(spec, Mapping) else {}
    kind = spec.get("type")
    written = found.written(name)
    enum = spec.get("enum")
    if isinstance(enum, list) and enum:
        for value in enum:
            if written is not None and str(value).lower() == written.lower():
                return value
        mentioned = [v for v in enum if found.mentions(str(v))]
        return mentioned[0] if mentioned else _declared(spec)
    if kind in ("integer", "number"):
        number = _number(written, kind == "integer")
        if number is None:
            number = _number(found.take_number(), kind == "integer")
        declared = _declared(spec)
        return number if number is not None else declared if declared is not None else 1
    if kind == "boolean":
        if written is not None and written.lower() in ("true", "false", "yes", "no"):
            return written.lower() in ("true", "yes")
        return bool(spec.get("default", True))
    if kind == "object":
        return _object(spec, found)
    if kind == "array":
        items = spec.get("items")
        return [_value(name, items, found)] if isinstance(items, Mapping) else []
    if written is not None:
        return written
    value = found.take_string()
    if value is None:
        value = _declared(spec)
    return value if value is not None else found.longest_word or name


def _object(schema: Any, found: _Candidates) -> dict[str, Any]:
    props = schema.get("properties") if isinstance(schema, Mapping) else None
    if not isinstance(props, Mapping):  # no usable schema: a call without arguments
        return {}
    return {name: _value(name, spec, found) for name, spec in props.items()}


def call_arguments(schema: Any, texts: Sequence[str], function_name: str) -> dict[str, Any]:
    """The arguments to call ``function_name`` with, from its ``parameters`` schema and the
    user's texts (newest first)."""
    exclude = {function_name.lower(), *_STOPWORDS}
    return _object(schema, _Candidates(texts, exclude))


__all__ = ["call_arguments"]

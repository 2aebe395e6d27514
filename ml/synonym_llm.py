"""Candidate words from a language model behind an OpenAI-compatible chat endpoint, as the paper made its synonyms.

`ask_synonyms` sends `POST {url}/chat/completions` (temperature 0, a JSON-object answer asked for) once
per class whose words it has not cached, asking for m synonyms usable as the class word in "a photo of
a {word}", and parses each answer strictly: the message must be the JSON object {"synonyms": [...]},
a short list of short phrases, or the whole answer is refused with the reason. Answers are cached per
(model, class) in one file each, named by a hash, so a class asked once (by the API's preview or a job)
needs no endpoint again.

Nothing here raises for the endpoint's sake: an unreachable, slow, failing or malformed endpoint
comes back as a reason per class, within `timeout` seconds for the whole batch, and the caller
carries on with the other sources. The key goes out as a Bearer header and nowhere else: no log
record, message, cache file or repr holds it.

No torch here: the API's synonym preview imports this.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from ml.synonyms import clean_words

log = logging.getLogger("pole")

LLM = "llm"  # the source name candidates record, alone or after the source it joined ("builtin+llm")
MAX_ANSWER_WORDS = 50  # a longer list is not an answer to "m synonyms"
MAX_PHRASE_WORDS = 4
MAX_PHRASE_CHARS = 40
MAX_BODY_BYTES = 256 * 1024  # a chat completion with a few words is a few KiB; more is not one
MAX_PARALLEL_REQUESTS = 8
# Letters and digits in words joined by single spaces, hyphens, apostrophes or periods ("t-shirt", "st. bernard").
PHRASE = re.compile(r"[^\W_]+\.?(?:(?: |-|'|\. ?)[^\W_]+\.?)*")

SYSTEM_PROMPT = "You name objects for an image classifier. Answer with one JSON object and nothing else."
USER_PROMPT = (
    'Give {m} synonyms or near-synonyms of the object class "{cls}": common nouns or short noun phrases '
    '(at most 3 words) that each fit as the word in the sentence "a photo of a {{word}}." and name the same '
    'kind of object. Answer as {{"synonyms": ["...", "..."]}}.'
)


class MalformedAnswer(ValueError):
    """The endpoint answered, but not with the JSON the request asked for."""


@dataclass(frozen=True)
class LlmEndpoint:
    url: str  # the API base, e.g. http://127.0.0.1:8080/v1; requests go to {url}/chat/completions
    model: str
    key: str = field(default="", repr=False)  # sent as "Authorization: Bearer"; never shown
    timeout: float = 10.0  # seconds one `ask_synonyms` call waits for all the answers it lacks
    cache_dir: Path | None = None  # None: nothing cached

    @property
    def shown_url(self) -> str:
        """The URL without credentials, query or fragment: what messages and records may show."""
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{host}{port}{parts.path}"

    def record(self) -> dict:
        return {"model": self.model, "url": self.shown_url}


@dataclass
class LlmSynonyms:
    """What the endpoint gave for each class asked: its words, or why there are none."""

    endpoint: LlmEndpoint
    words: dict[str, list[str]] = field(default_factory=dict)  # class -> the model's words (cached or new)
    errors: dict[str, str] = field(default_factory=dict)  # class -> why the model gave none

    def record(self) -> dict:
        """For stage.json and the job's provenance: which model answered for which classes (never the key)."""
        return {**self.endpoint.record(), "classes": sorted(self.words), "failed": dict(sorted(self.errors.items()))}

    def failure_message(self) -> str:
        shown = "; ".join(f"{name}: {reason}" for name, reason in list(self.errors.items())[:5])
        more = f" and {len(self.errors) - 5} more" if len(self.errors) > 5 else ""
        return (
            f"the language model {self.endpoint.model} at {self.endpoint.shown_url} gave no synonyms for "
            f"{len(self.errors)} class(es) ({shown}{more}); they used the other sources' words "
            "(check POLE_SYNONYM_LLM_URL, _MODEL and _KEY)"
        )


def ask_synonyms(endpoint: LlmEndpoint, classes: list[str], m: int) -> LlmSynonyms:
    """The model's synonyms for each of `classes`: from the cache, else asked (in parallel) within
    `endpoint.timeout` seconds in all. A class not answered by then, or answered badly, gets a reason in
    `errors` instead; an answer that arrives later is still cached, for the next call."""
    result = LlmSynonyms(endpoint)
    if m == 0:  # a run that keeps no synonyms has nothing to ask for
        return result
    missing = []
    for cls in dict.fromkeys(classes):
        cached = read_cached(endpoint, cls, m)
        if cached is None:
            missing.append(cls)
        else:
            result.words[cls] = cached
    if not missing:
        return result
    pool = ThreadPoolExecutor(min(MAX_PARALLEL_REQUESTS, len(missing)), thread_name_prefix="pole-synonym-llm")
    futures = {pool.submit(_ask_and_cache, endpoint, cls, m): cls for cls in missing}
    done, _ = wait(futures, timeout=endpoint.timeout)
    # Requests still in flight end by their own timeouts; the caller never waits for them.
    pool.shutdown(wait=False, cancel_futures=True)
    for future, cls in futures.items():
        if future in done:
            words, error = future.result()
            if error is None:
                result.words[cls] = words
            else:
                result.errors[cls] = error
        else:
            result.errors[cls] = f"no answer within {endpoint.timeout:g} s"
    if result.errors:
        log.info("synonym language model: no words for %d class(es): %s", len(result.errors), result.errors)
    return result


def _ask_and_cache(endpoint: LlmEndpoint, cls: str, m: int) -> tuple[list[str], str | None]:
    """(words, None), cached; or ([], the reason the endpoint gave none)."""
    try:
        words = parse_answer(_post(endpoint, request_body(endpoint.model, cls, m)))
    except httpx.TimeoutException:
        return [], f"no answer within {endpoint.timeout:g} s"
    except httpx.HTTPStatusError as err:
        return [], f"{endpoint.shown_url} answered {err}"
    except httpx.HTTPError as err:
        return [], f"cannot reach {endpoint.shown_url}: {type(err).__name__}: {err}"
    except MalformedAnswer as err:
        return [], f"malformed answer: {err}"
    write_cached(endpoint, cls, m, words)
    return words, None


def request_body(model: str, cls: str, m: int) -> dict:
    return {
        "model": model,
        "temperature": 0,
        "response_format": {"type": "json_object"},
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": USER_PROMPT.format(m=m, cls=cls)},
        ],
    }


def _post(endpoint: LlmEndpoint, body: dict) -> bytes:
    """The response body of a 2xx answer, at most MAX_BODY_BYTES; HTTP errors raise httpx.HTTPError."""
    headers = {"Authorization": f"Bearer {endpoint.key}"} if endpoint.key else {}
    url = endpoint.url.rstrip("/") + "/chat/completions"
    with (
        httpx.Client(timeout=endpoint.timeout, follow_redirects=False, trust_env=False) as client,
        client.stream("POST", url, json=body, headers=headers) as response,
    ):
        if not response.is_success:
            # The body is not quoted: an error page may echo the request, key included.
            raise httpx.HTTPStatusError(f"HTTP {response.status_code}", request=response.request, response=response)
        received = bytearray()
        for chunk in response.iter_bytes():
            received += chunk
            if len(received) > MAX_BODY_BYTES:
                raise MalformedAnswer(f"the response exceeds {MAX_BODY_BYTES} bytes")
        return bytes(received)


def parse_answer(body: bytes | str) -> list[str]:
    """The words of a chat completion whose message is {"synonyms": [phrase, ...]}; MalformedAnswer otherwise."""
    try:
        reply = json.loads(body)
    except ValueError as err:  # UnicodeDecodeError is one
        raise MalformedAnswer("the response is not JSON") from err
    try:
        content = reply["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError) as err:
        raise MalformedAnswer("the response has no choices[0].message.content") from err
    if not isinstance(content, str):
        raise MalformedAnswer("the message content is not text")
    return parse_synonyms(content)


def parse_synonyms(content: str) -> list[str]:
    """The words of a message {"synonyms": [phrase, ...]}, each a short phrase; MalformedAnswer otherwise."""
    try:
        answer = json.loads(content)
    except ValueError as err:
        raise MalformedAnswer(f"the message is not JSON: {_shown(content)}") from err
    if not isinstance(answer, dict) or set(answer) != {"synonyms"}:
        raise MalformedAnswer(f'the message is not the object {{"synonyms": [...]}}: {_shown(content)}')
    words = answer["synonyms"]
    if not isinstance(words, list) or len(words) > MAX_ANSWER_WORDS:
        raise MalformedAnswer(f'"synonyms" is not a list of at most {MAX_ANSWER_WORDS} phrases: {_shown(content)}')
    for word in words:
        problem = _phrase_problem(word)
        if problem:
            raise MalformedAnswer(f"{_shown(json.dumps(word))} is {problem}")
    return [" ".join(word.split()) for word in words]


def _phrase_problem(word: object) -> str | None:
    if not isinstance(word, str):
        return "not a string"
    if not word.isprintable():
        return "not one line of text"
    word = " ".join(word.split())
    if len(word) > MAX_PHRASE_CHARS or len(word.split()) > MAX_PHRASE_WORDS:
        return f"longer than {MAX_PHRASE_WORDS} words or {MAX_PHRASE_CHARS} characters"
    if not PHRASE.fullmatch(word):
        return "not a phrase of letters and digits"
    return None


def _shown(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def cache_path(cache_dir: Path, model: str, cls: str) -> Path:
    """One file per (model, class), named by their hash: no model or class name reaches the path."""
    return cache_dir / f"{hashlib.sha256(json.dumps([model, cls]).encode()).hexdigest()}.json"


def read_cached(endpoint: LlmEndpoint, cls: str, m: int) -> list[str] | None:
    """The cached words of `cls`, if an answer to at least `m` synonyms is cached; a damaged file is a miss."""
    if endpoint.cache_dir is None:
        return None
    try:
        entry = json.loads(cache_path(endpoint.cache_dir, endpoint.model, cls).read_text(encoding="utf-8"))
        if entry["model"] != endpoint.model or entry["class"] != cls or entry["asked"] < m:
            return None
        return parse_synonyms(json.dumps(entry["answer"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as err:
        log.warning("synonym cache entry of %r unreadable (%s); asking again", cls, err)
        return None


def write_cached(endpoint: LlmEndpoint, cls: str, m: int, words: list[str]) -> None:
    """Written whole or not at all (a temporary file renamed); a cache that cannot be written is only logged."""
    if endpoint.cache_dir is None:
        return
    entry = {"model": endpoint.model, "class": cls, "asked": m, "answer": {"synonyms": words}}
    try:
        endpoint.cache_dir.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=endpoint.cache_dir, suffix=".tmp")
        with os.fdopen(handle, "w", encoding="utf-8") as f:
            json.dump(entry, f)
        os.replace(tmp, cache_path(endpoint.cache_dir, endpoint.model, cls))
    except OSError as err:
        log.warning("could not cache the language model's synonyms of %r: %s", cls, err)


def open_to_llm(words: list[str], source: str) -> bool:
    """Whether a class's gathered words take the model's too: not the job's own lists (they are final), nor a
    table's row listing no synonyms on purpose."""
    return source == "none" or (source != "job" and bool(words))


def with_llm_words(cls: str, words: list[str], source: str, llm: LlmSynonyms) -> tuple[list[str], str]:
    """The gathered words of `cls` followed by the model's (duplicates dropped), and the sources named together."""
    if cls not in llm.words:
        return words, source
    return clean_words([*words, *llm.words[cls]], cls), LLM if source == "none" else f"{source}+{LLM}"

"""The wire between a sandboxed candidate and the checker that calls it (`tasks.checker.run_check`).

This file's source runs, as text, inside both sandboxed programs, so it imports only the standard library and
keeps to what the sandbox's Python (3.8 or later) has. The checker calls the candidate's function through a
`Candidate`; the candidate's process answers in `serve`. Arguments and answers cross one connected socket as
JSON lines of plain built-in data only, tagged so that tuples, sets, dicts and bytes come back as what they were.
An answer is therefore data, never an object with behaviour of its own (an `__eq__` that says yes to everything
does not survive the crossing), and the checker rebuilds it strictly: anything else the candidate sends, or
nothing at all, is an error in the checker, that is a failed verdict.
"""

import json
import os
import sys

MAX_MESSAGE = 64 << 20  # bytes: a longer line from the other side is an error
_CONTAINERS = ("list", "tuple", "set", "frozenset", "iterator", "dict")


def _big_integers():
    """Let big integers cross as JSON digits (called in the sandboxed processes only, never in the harness)."""
    if hasattr(sys, "set_int_max_str_digits"):
        sys.set_int_max_str_digits(0)


class WireError(Exception):
    """The other side sent something that is not a message of this wire, or went away."""


def encode(value):
    """`value` as JSON-ready data: None, bool, int, float and str as they are, containers tagged, built-in
    subclasses as their base type (a namedtuple as a tuple), an iterator as the items it yields."""
    if value is None or type(value) in (bool, int, float, str):
        return value
    for base in (bool, int, float, str):
        if isinstance(value, base):
            return base(value)
    if isinstance(value, (bytes, bytearray)):
        return {"bytes": bytes(value).hex()}
    if isinstance(value, complex):
        return {"complex": [value.real, value.imag]}
    for base, tag in ((tuple, "tuple"), (list, "list"), (frozenset, "frozenset"), (set, "set")):
        if isinstance(value, base):
            return {tag: [encode(item) for item in value]}
    if isinstance(value, dict):
        return {"dict": [[encode(k), encode(v)] for k, v in value.items()]}
    if hasattr(type(value), "__next__") and hasattr(type(value), "__iter__"):
        return {"iterator": [encode(item) for item in value]}
    raise TypeError(f"a {type(value).__name__} cannot cross the sandbox (only built-in data types can)")


def decode(data):
    """The value `encode` made `data` from; anything that `encode` cannot have made is a `WireError`."""
    if data is None or type(data) in (bool, int, float, str):
        return data
    if type(data) is not dict or len(data) != 1:
        raise WireError("malformed value")
    ((tag, body),) = data.items()
    if tag == "bytes" and type(body) is str:
        return bytes.fromhex(body)
    if tag == "complex" and type(body) is list and len(body) == 2 and all(type(x) in (int, float) for x in body):
        return complex(body[0], body[1])
    if tag not in _CONTAINERS or type(body) is not list:
        raise WireError("malformed value")
    if tag == "dict":
        if not all(type(pair) is list and len(pair) == 2 for pair in body):
            raise WireError("malformed dict")
        return {decode(k): decode(v) for k, v in body}
    items = [decode(item) for item in body]
    build = {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset, "iterator": iter}[tag]
    return build(items)


def send(fd, message):
    """Write one message (a JSON line) to `fd`, all of it."""
    data = memoryview((json.dumps(message) + "\n").encode("utf-8"))
    while data:
        data = data[os.write(fd, data) :]


class Lines:
    """The JSON messages arriving on `fd`, one per line."""

    def __init__(self, fd):
        self.fd = fd
        self.buffer = b""

    def next(self):
        """The next message, or None when the other side has closed its end."""
        while b"\n" not in self.buffer:
            if len(self.buffer) > MAX_MESSAGE:
                raise WireError(f"a message longer than {MAX_MESSAGE} bytes")
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        try:
            return json.loads(line)
        except ValueError:
            raise WireError("a message that is not JSON") from None


def serve(fd, function):
    """Candidate side: answer every call that arrives on `fd` with `function`'s result or the exception it
    raised, until the checker closes its end."""
    _big_integers()
    lines = Lines(fd)
    while True:
        request = lines.next()
        if request is None:
            return
        try:
            answer = {"ok": encode(function(*decode(request["args"]), **decode(request["kwargs"])))}
        except BaseException as exc:  # noqa: BLE001  (sys.exit() in the function is its answer too)
            answer = {"raised": (f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)[:1000]}
        send(fd, answer)


ENDED = "the candidate's process ended before it answered"


class CandidateError(Exception):
    """The candidate raised, sent a malformed answer or ended: the test that called it fails."""


class Candidate:
    """Checker side: the candidate's function, called across the wire. Each call sends the arguments and
    returns the rebuilt answer (raises `CandidateError` for anything else)."""

    def __init__(self, fd, name):
        _big_integers()
        self.fd = fd
        self.__name__ = name
        self.lines = Lines(fd)

    def __call__(self, *args, **kwargs):
        try:
            send(self.fd, {"args": encode(args), "kwargs": encode(kwargs)})
            answer = self.lines.next()
        except OSError:
            answer = None
        if answer is None:
            raise CandidateError(ENDED)
        if type(answer) is dict and len(answer) == 1 and "ok" in answer:
            return decode(answer["ok"])
        if type(answer) is dict and len(answer) == 1 and type(answer.get("raised")) is str:
            raise CandidateError("the candidate raised " + answer["raised"])
        raise WireError("a malformed answer")

"""Hugging Face Hub access: ``hf-hub:OWNER/NAME[@REV]`` ids, downloads through the cache, and one translation of
``huggingface_hub`` / network exceptions into one-line :class:`HubError` messages.

Everything goes through ``huggingface_hub`` (its cache, revisions, token lookup and ``HF_ENDPOINT`` /
``HF_HUB_OFFLINE`` handling). The token is only handed to ``huggingface_hub``; it is never in a message or a file.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal
from urllib.parse import unquote

import httpx2
from huggingface_hub import constants, get_session, get_token, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import validate_repo_id

from snapvit_cli._version import __version__
from snapvit_cli.errors import SnapvitError

HF_PREFIX = "hf-hub:"
BUNDLE_FILENAME = "bundle.safetensors"
SLICED_FILES = ("config.json", "model.safetensors")
CARD_FILENAME = "README.md"
USER_AGENT = {"library_name": "snapvit", "library_version": __version__}

Kind = Literal["sliced", "bundle"]


class HubError(SnapvitError):
    """The Hub could not be reached, refused the request, or does not have what was asked for."""


# -- reachability -----------------------------------------------------------------------------------------
#
# huggingface_hub falls back to its cache quickly only when a request *fails*; a host that resolves and accepts
# connections but never answers (a captive portal, a firewall that drops packets, a dead proxy) makes a download
# wait for its etag timeout, then retry with a 60 s timeout and five back-offs (hf_hub_download), and the API
# calls behind snapshot_download and push have no timeout at all. So every Hub access first asks the endpoint
# once through huggingface_hub's own HTTP session (its proxies and offline switch), bounded by
# HUB_CONNECT_TIMEOUT_S for connecting and HUB_TIMEOUT_S for the answer: any HTTP answer, even an error status,
# means reachable.

HUB_TIMEOUT_S = 1.0  # for the answer; connecting may take longer on slow links (TCP + TLS handshakes)
HUB_CONNECT_TIMEOUT_S = 1.5
UNREACHABLE_MEMORY_S = 30.0  # one command asks once: a failed probe is remembered this long per endpoint
_unreachable: dict[str, tuple[float, str]] = {}


def hub_unreachable() -> str | None:
    """Why the Hub endpoint cannot be reached now, or None when it answers (or offline mode is on, where
    huggingface_hub itself serves the cache without asking)."""
    if constants.is_offline_mode():
        return None
    endpoint = constants.ENDPOINT
    remembered = _unreachable.get(endpoint)
    if remembered is not None and time.monotonic() - remembered[0] < UNREACHABLE_MEMORY_S:
        return remembered[1]
    try:
        timeout = httpx2.Timeout(HUB_TIMEOUT_S, connect=HUB_CONNECT_TIMEOUT_S)
        get_session().head(endpoint, timeout=timeout, follow_redirects=False)
    except OfflineModeIsEnabled:
        return None
    except httpx2.ConnectTimeout:
        reason = f"no connection within {HUB_CONNECT_TIMEOUT_S:g} s"
    except httpx2.TimeoutException:
        reason = f"no answer within {HUB_TIMEOUT_S:g} s"
    except httpx2.TransportError as err:
        reason = f"{type(err).__name__}: {_first(err)}"
    else:
        _unreachable.pop(endpoint, None)
        return None
    _unreachable[endpoint] = (time.monotonic(), reason)
    return reason


def forget_reachability() -> None:
    """Forget failed probes, e.g. after pointing ``HF_ENDPOINT`` at a host that is now up."""
    _unreachable.clear()


_offline_lock = threading.Lock()
_offline_blocks = 0  # offline_mode() blocks now running, in any thread
_offline_before = False  # HF_HUB_OFFLINE as it was before the first of them


@contextlib.contextmanager
def offline_mode() -> Iterator[None]:
    """huggingface_hub's offline mode (``HF_HUB_OFFLINE=1``) for the block: requests fail at once and files
    come from the cache.

    huggingface_hub reads one process-wide flag, so while any such block runs every thread's Hub calls are offline;
    blocks may overlap across threads in any order, and the flag returns to its earlier value when the last ends.
    """
    global _offline_blocks, _offline_before
    with _offline_lock:
        if _offline_blocks == 0:
            _offline_before = constants.HF_HUB_OFFLINE
            constants.HF_HUB_OFFLINE = True
        _offline_blocks += 1
    try:
        yield
    finally:
        with _offline_lock:
            _offline_blocks -= 1
            if _offline_blocks == 0:
                constants.HF_HUB_OFFLINE = _offline_before


def require_hub() -> None:
    """Raise a one-line :class:`HubError` now if the Hub cannot be reached (for uploads: no cache to fall back on)."""
    reason = hub_unreachable()
    if reason is not None:
        raise HubError(unreachable_message(reason))


# -- hf-hub ids ------------------------------------------------------------------------------------------


def is_hf_id(s: object) -> bool:
    """Whether ``s`` names a Hub repository (``hf-hub:OWNER/NAME[@REVISION]``) rather than a local path."""
    return isinstance(s, str) and s.startswith(HF_PREFIX)


def parse_hf_id(hf_id: str) -> tuple[str, str | None]:
    """Split ``hf-hub:OWNER/NAME[@REVISION]`` into ``(repo_id, revision)``."""
    if not is_hf_id(hf_id):
        raise HubError(f"not a Hub id: {hf_id!r}; expected hf-hub:OWNER/NAME[@REVISION]")
    repo_id, _, revision = hf_id[len(HF_PREFIX) :].partition("@")
    check_repo_id(repo_id)
    if "@" in hf_id[len(HF_PREFIX) :] and not revision:
        raise HubError(f"empty revision in {hf_id!r}; expected hf-hub:OWNER/NAME@REVISION")
    return repo_id, revision or None


def check_repo_id(repo_id: str) -> None:
    """Require ``OWNER/NAME``: the owner is part of every ``hf-hub:`` id we print, so it must be explicit."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise HubError(f"invalid Hub repository id {repo_id!r}: expected OWNER/NAME") from err
    if repo_id.count("/") != 1:
        raise HubError(f"invalid Hub repository id {repo_id!r}: expected OWNER/NAME")


# -- error translation -----------------------------------------------------------------------------------


@contextlib.contextmanager
def hub_errors(repo_id: str | None = None, token: str | None = None) -> Iterator[None]:
    """Turn ``huggingface_hub`` / HTTP exceptions raised in the block into a one-line :class:`HubError`."""
    try:
        yield
    except SnapvitError:
        raise
    except Exception as err:
        message = hub_error_message(err, repo_id, token)
        if message is None:
            raise
        raise HubError(message) from err


def hub_error_message(err: BaseException, repo_id: str | None = None, token: str | None = None) -> str | None:
    """The one-line message for a Hub or network exception, or None when ``err`` is not one (a bug).

    This is the one place that maps ``huggingface_hub`` exceptions to advice. Server messages are quoted, so
    the token in use (``token``, else the one huggingface_hub would send) is masked in case a server echoes it.
    """
    translated = _translate(err, repo_id)
    if translated is None:
        return None
    message = str(translated)
    secret = token or get_token()
    return message.replace(secret, "***") if secret else message


def unreachable_message(reason: str) -> str:
    """What to say when the Hub's host cannot be reached at all (also used by the fail-fast DNS check)."""
    return f"cannot reach the Hub at {constants.ENDPOINT} ({reason}); check your network connection and HF_ENDPOINT"


def _translate(err: BaseException, repo_id: str | None = None) -> HubError | None:
    """The :class:`HubError` for ``err`` or, when wrapped, for its first recognisable cause; None for bugs."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        # A cache miss wraps the real reason (offline, unreachable, 5xx) as its cause: report that first.
        if not isinstance(current, LocalEntryNotFoundError):
            translated = _translate_one(current, repo_id)
            if translated is not None:
                return translated
        current = current.__cause__ or current.__context__
    if isinstance(err, LocalEntryNotFoundError):
        return HubError(f"{_what(repo_id)} is not in the local cache and the Hub could not be asked: {_first(err)}")
    return None


def _translate_one(err: BaseException, repo_id: str | None) -> HubError | None:
    what = _what(repo_id)
    if isinstance(err, OfflineModeIsEnabled):
        return HubError(
            "cannot reach the Hub (offline): HF_HUB_OFFLINE=1 is set; unset it to push, or to download what is "
            "not cached yet"
        )
    if isinstance(err, GatedRepoError):
        return HubError(f"{what} is gated: request access on its Hub page and use a token of an account that has it")
    if isinstance(err, RepositoryNotFoundError):
        return HubError(
            f"repository not found on the Hub: {what}; check the name, and for a private repository set "
            "HF_TOKEN or run `hf auth login` with an account that can see it"
        )
    if isinstance(err, RevisionNotFoundError):
        return HubError(f"revision not found in {what}: check the branch, tag or commit after '@'")
    if isinstance(err, RemoteEntryNotFoundError):
        return HubError(f"file not found in {what}: {unquote(err.response.url.path.rsplit('/', 1)[-1])}")
    if isinstance(err, HfHubHTTPError):
        return _translate_status(err, what)
    if isinstance(err, httpx2.TransportError):
        return HubError(unreachable_message(f"{type(err).__name__}: {_first(err)}"))
    return None


def _translate_status(err: HfHubHTTPError, what: str) -> HubError:
    status = err.response.status_code
    server = f" ({err.server_message.splitlines()[0]})" if err.server_message else ""
    if status in (401, 403):
        return HubError(f"authentication failed{server}: check HF_TOKEN / `hf auth login` and its rights on {what}")
    if status == 429:
        return HubError(f"the Hub is rate-limiting requests (429){server}; wait a moment and try again")
    if status >= 500:
        detail = f": {err.server_message.splitlines()[0]}" if err.server_message else ""
        return HubError(f"the Hub answered {status} (server error{detail}); try again later")
    return HubError(f"the Hub refused the request for {what} with {status}{server}")


def _what(repo_id: str | None) -> str:
    return repo_id or "the repository"


def _first(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


# -- download --------------------------------------------------------------------------------------------
#
# Everything goes through ``snapshot_download``: it asks the Hub once (repo info) and, when that fails for
# any reason (offline, unreachable, 5xx), looks in the cache at once. ``hf_hub_download`` would instead retry
# a failed lookup with back-off for ~25 s and log every retry.


def _snapshot(hf_id: str, patterns: list[str], revision: str | None) -> Path:
    """The cached snapshot folder holding the files of ``hf_id`` that match ``patterns`` (``revision``
    overrides an ``@REV`` in the id)."""
    repo_id, parsed_revision = parse_hf_id(hf_id)
    unreachable = hub_unreachable()
    if unreachable is None:
        with hub_errors(repo_id):
            return Path(
                snapshot_download(repo_id, revision=revision or parsed_revision, allow_patterns=patterns, **USER_AGENT)
            )
    try:  # the cached copy, if any, as HF_HUB_OFFLINE=1 would serve it
        with offline_mode():
            folder = snapshot_download(
                repo_id, revision=revision or parsed_revision, allow_patterns=patterns, **USER_AGENT
            )
    except Exception:  # noqa: BLE001 - not cached (LocalEntryNotFoundError and kin): the network is the reason
        raise HubError(f"{unreachable_message(unreachable)}; {hf_id} is not in the local cache") from None
    return Path(folder)


def resolve_hub_artifact(hf_id: str, revision: str | None = None) -> tuple[Kind, Path]:
    """Whether ``hf_id`` holds a bundle or a sliced model, with its local path (bundle file or model folder).

    One snapshot of whichever snapvit files the repository has, so cached repositories of either kind also
    resolve offline.
    """
    folder = _snapshot(hf_id, [BUNDLE_FILENAME, *SLICED_FILES], revision)
    if (folder / BUNDLE_FILENAME).is_file():
        return "bundle", folder / BUNDLE_FILENAME
    if all((folder / name).is_file() for name in SLICED_FILES):
        return "sliced", folder
    raise HubError(f"{hf_id} holds neither {BUNDLE_FILENAME} nor {' + '.join(SLICED_FILES)}: not a snapvit repo")

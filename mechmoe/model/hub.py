"""The hub as mechmoe uses it: online or offline, branches of a repo, the local cache.

*Offline* is decided as huggingface_hub decides it: ``HF_HUB_OFFLINE=1``, or a request
that cannot reach the hub at all (no route, DNS failure, time-out). Only then does
mechmoe use what the local hub cache holds; a hub (or an ``HF_ENDPOINT`` mirror) that
answers with an error is reported as that error, never silently replaced by the cache.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from mechmoe.core.errors import HubError, ModelNotFoundError


def is_offline() -> bool:
    """Whether huggingface_hub is in offline mode (``HF_HUB_OFFLINE=1`` when it was imported)."""
    from huggingface_hub import constants

    return bool(constants.is_offline_mode())


def network_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean "the hub cannot be reached": offline mode, connection
    failures and time-outs of the HTTP client huggingface_hub uses (``httpx2``, or
    ``httpx`` in huggingface_hub 1.x). A proxy error or an HTTP error status is not one:
    those are answers, reported as they are.
    """
    from huggingface_hub.errors import OfflineModeIsEnabled

    errors: list[type[BaseException]] = [OfflineModeIsEnabled]
    for client in ("httpx2", "httpx"):
        try:
            module = importlib.import_module(client)
        except ImportError:
            continue
        errors += [module.NetworkError, module.TimeoutException]
    return tuple(errors)


def _client_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = []
    for client in ("httpx2", "httpx"):
        try:
            errors.append(importlib.import_module(client).HTTPError)
        except ImportError:
            continue
    return tuple(errors)


def cache_repo_folder(repo_id: str) -> Path:
    """Where the local hub cache keeps ``repo_id`` (it may not exist)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE) / ("models--" + repo_id.replace("/", "--"))


def cached_branches(repo_id: str) -> list[str] | None:
    """Branches (and tags) of ``repo_id`` in the local hub cache, or ``None`` if the repo
    is not cached. Names with a ``/`` (``feature/x``) are kept whole."""
    refs = cache_repo_folder(repo_id) / "refs"
    if not refs.is_dir():
        return None
    return sorted(p.relative_to(refs).as_posix() for p in refs.rglob("*") if p.is_file())


def list_hub_branches(repo: str) -> tuple[list[str], str]:
    """Branch names of a hub repo and where they came from (``"hub"`` or ``"cache"``).

    Online, the hub is asked (``huggingface_hub.list_repo_refs``, which honours
    ``HF_ENDPOINT``). Offline (``HF_HUB_OFFLINE=1``, or the hub cannot be reached), the
    branches already in the local hub cache are listed instead. A hub that answers with an
    error is a :class:`~mechmoe.core.errors.HubError` saying how to use the cache instead.
    """
    import huggingface_hub
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
    )

    reason = "HF_HUB_OFFLINE is set"
    if not is_offline():
        try:
            refs = huggingface_hub.list_repo_refs(repo)
        except GatedRepoError:
            raise ModelNotFoundError(
                f"model {repo!r} is gated: log in with `hf auth login` first"
            ) from None
        except RepositoryNotFoundError:
            raise ModelNotFoundError(f"model {repo!r} not found on the hub") from None
        except network_errors() as exc:
            reason = f"the hub cannot be reached: {_first_line(exc)}"
        except HfHubHTTPError as exc:
            raise _hub_error(repo, _first_line(exc)) from None
        except (ValueError, KeyError, TypeError) as exc:  # an answer that is not the hub's
            raise _hub_error(repo, f"its answer is not the hub's ({_first_line(exc)})") from None
        except _client_errors() as exc:  # a proxy error, a broken answer
            raise _hub_error(repo, f"{type(exc).__name__}: {_first_line(exc)}") from None
        else:
            return sorted(b.name for b in refs.branches), "hub"
    cached = cached_branches(repo)
    if cached is None:
        raise ModelNotFoundError(
            f"cannot list the branches of {repo!r} ({reason}) and it is not in the local hub "
            "cache; connect to the hub or use --checkpoints with a local folder"
        )
    return cached, "cache"


def _hub_error(repo: str, detail: str) -> HubError:
    from huggingface_hub import constants

    cached = cached_branches(repo)
    fallback = (
        f"; to use the {len(cached)} branches in the local hub cache instead, set HF_HUB_OFFLINE=1"
        if cached
        else ""
    )
    return HubError(
        f"the hub at {constants.ENDPOINT} could not list the branches of {repo!r}: {detail}"
        f"{fallback}"
    )


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__


__all__ = [
    "cache_repo_folder",
    "cached_branches",
    "is_offline",
    "list_hub_branches",
    "network_errors",
]

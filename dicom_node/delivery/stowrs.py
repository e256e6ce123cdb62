"""Send result objects to a DICOMweb origin server by STOW-RS (PS3.18 10.5) with dicomweb-client.

One ``POST {root}/studies`` per batch of ``batch_size`` instances
(``multipart/related; type="application/dicom"``). The response's Store
Instances Response Module (PS3.18 10.5.3, Table 10.5.3-1) gives per-instance
results: items of the Referenced SOP Sequence were stored (with a Warning
Reason they count as sent with a warning); items of the Failed SOP Sequence
carry a Failure Reason that is a PS3.4 status and is classified like a C-STORE
status. HTTP errors without a usable body are classified by HTTP status
(:func:`dicom_node.delivery.classify.classify_http_status`).

The session comes from :func:`dicom_node.net.http.new_session`: every request is
checked against the destination's outbound policy and sent to the address that
was checked (DNS pinning). Redirects are never followed (a redirect could lead a
POST of results to a host the configuration did not name); the library's own
retries are off because the delivery ledger schedules retries.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset

from dicom_node.config.delivery import StowDestination
from dicom_node.delivery.classify import Outcome, Verdict, classify_dimse_status, classify_http_status, describe_status
from dicom_node.errors import DeliveryError
from dicom_node.net.http import new_session
from dicom_node.net.policy import OutboundError
from dicom_node.net.retry import parse_retry_after

__all__ = ["build_session", "send_stow"]

log = logging.getLogger(__name__)

OnOutcome = Callable[[Outcome], None]

#: DICOM JSON media types a STOW-RS response body may have (PS3.18 8.7.3).
_JSON_TYPES = ("application/dicom+json", "application/json")


def build_session(dest: StowDestination) -> requests.Session:
    """A pinned session for ``dest``: its policy, auth and CA bundle; no redirects, no .netrc or proxy variables.

    Raises
    ------
    DeliveryError
        A credentials file cannot be read (not retryable).
    """
    try:
        return new_session(dest.policy(), dest.auth, dest.ca_file)
    except OutboundError as exc:
        raise DeliveryError(str(exc), retryable=exc.retryable) from exc


def _client(dest: StowDestination, statuses: list[int]) -> DICOMwebClient:
    try:
        # Checked (and resolved) here so a refused URL fails every object at once; the session pins each request.
        dest.policy().pin(dest.url)
    except OutboundError as exc:
        raise DeliveryError(str(exc), retryable=exc.retryable) from exc

    def _remember(response: requests.Response, *args: Any, **kwargs: Any) -> requests.Response:
        statuses.append(int(response.status_code))
        return response

    client = DICOMwebClient(dest.url.rstrip("/"), session=build_session(dest), timeout=dest.timeout, callback=_remember)
    client.set_http_retry_params(retry=False)
    return client


def _body(response: requests.Response | None) -> Dataset | None:
    """The Store Instances Response dataset of an error response, when it has one."""
    if response is None or not response.content:
        return None
    if response.headers.get("Content-Type", "").split(";")[0].strip() not in _JSON_TYPES:
        return None
    try:
        return Dataset.from_json(response.json())
    except ValueError:
        return None


def _wrap(exc: Exception, dest: StowDestination) -> DeliveryError:
    """Map a requests/dicomweb-client exception to a DeliveryError (PS3.18 8.6 / RFC 9110 semantics)."""
    where = f"STOW-RS {dest.name}"
    if isinstance(exc, OutboundError):  # the policy refused the pinned request (e.g. the name now resolves elsewhere)
        return DeliveryError(f"{where}: {exc}", retryable=exc.retryable)
    if isinstance(exc, requests.HTTPError):
        code = exc.response.status_code if exc.response is not None else 0
        verdict = classify_http_status(code)
        return DeliveryError(f"{where}: HTTP {code}", retryable=verdict is Verdict.RETRY)
    if isinstance(exc, requests.exceptions.SSLError):
        return DeliveryError(f"{where}: TLS failure: {exc}", retryable=False)
    if isinstance(exc, requests.TooManyRedirects):
        return DeliveryError(f"{where}: server answered with a redirect; configure the final URL", retryable=False)
    if isinstance(exc, (requests.ConnectionError, requests.Timeout)):
        return DeliveryError(f"{where}: {type(exc).__name__}: cannot reach {dest.url}", retryable=True)
    if isinstance(exc, (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema)):
        return DeliveryError(f"{where}: invalid URL", retryable=False)
    # dicomweb-client raises ValueError on a response it cannot parse; the server may have stored them.
    return DeliveryError(f"{where}: unexpected response: {type(exc).__name__}: {exc}", retryable=True)


def _per_instance(result: Dataset | None, uid: str, http_status: int) -> Outcome | None:
    """The outcome the Store Instances Response gives for ``uid``, if it names it (PS3.18 Table 10.5.3-1)."""
    if result is None:
        return None
    for item in result.get("FailedSOPSequence", []):
        if str(item.get("ReferencedSOPInstanceUID", "")) == uid:
            reason = int(item.get("FailureReason", 0x0110))
            return Outcome(uid, classify_dimse_status(reason), f"STOW-RS failure reason {describe_status(reason)}",
                           status=reason, http_status=http_status)
    for item in result.get("ReferencedSOPSequence", []):
        if str(item.get("ReferencedSOPInstanceUID", "")) == uid:
            warning = item.get("WarningReason")
            if warning is not None:
                return Outcome(uid, Verdict.WARNING, f"STOW-RS warning {describe_status(int(warning))}",
                               status=int(warning), http_status=http_status)
            return Outcome(uid, Verdict.SUCCESS, f"stored (HTTP {http_status})", http_status=http_status)
    return None


def _post_batch(client: DICOMwebClient, dest: StowDestination, batch: Sequence[Dataset], statuses: list[int]) -> list[Outcome]:
    uids = [str(ds.SOPInstanceUID) for ds in batch]
    try:
        result: Dataset | None = client.store_instances(list(batch))
        http_status = statuses[-1] if statuses else 200
        error: DeliveryError | None = None
        retry_after: float | None = None
    except (requests.RequestException, OutboundError, ValueError, KeyError) as exc:
        error = _wrap(exc, dest)
        response = exc.response if isinstance(exc, requests.HTTPError) else None
        result = _body(response)
        http_status = response.status_code if response is not None else 0
        # A 429/503 may say when to come back (RFC 9110 10.2.3); the ledger schedules the retry no earlier.
        retry_after = parse_retry_after(response.headers.get("Retry-After")) if response is not None else None
        log.warning("stow-rs failed destination=%s instances=%d error=%s", dest.name, len(batch), error)
    outcomes = []
    for uid in uids:
        outcome = _per_instance(result, uid, http_status)
        if outcome is None and error is not None:
            verdict = Verdict.RETRY if error.retryable else Verdict.DEAD
            outcome = Outcome(uid, verdict, str(error), http_status=http_status or None, retry_after=retry_after)
        elif outcome is None:
            # PS3.18 10.5.3: 200 means every instance was stored; 202 without this UID is unknown, so retry.
            verdict = Verdict.SUCCESS if http_status == 200 else Verdict.RETRY
            outcome = Outcome(uid, verdict, f"HTTP {http_status}, instance not listed in the response", http_status=http_status)
        outcomes.append(outcome)
    return outcomes


def send_stow(dest: StowDestination, datasets: Sequence[Dataset], on_outcome: OnOutcome | None = None) -> list[Outcome]:
    """STOW-RS ``datasets`` to ``dest``; one :class:`Outcome` per object, in order.

    Parameters
    ----------
    dest : StowDestination
        The DICOMweb service root and its credentials.
    datasets : sequence of pydicom.dataset.Dataset
        Objects with file meta.
    on_outcome : callable, optional
        Called with each outcome as soon as its batch is answered.

    Returns
    -------
    list of Outcome
        In the order of ``datasets``.

    Raises
    ------
    DeliveryError
        When the URL fails the SSRF checks or a credentials file cannot be
        read (``retryable`` False), or the host name does not resolve (True).
    """
    statuses: list[int] = []
    client = _client(dest, statuses)
    outcomes: list[Outcome] = []
    for start in range(0, len(datasets), dest.batch_size):
        batch = datasets[start : start + dest.batch_size]
        statuses.clear()
        for outcome in _post_batch(client, dest, batch, statuses):
            log.info(
                "stow-rs destination=%s sop_instance_uid=%s verdict=%s detail=%s",
                dest.name, outcome.sop_instance_uid, outcome.verdict.value, outcome.detail,
            )
            outcomes.append(outcome)
            if on_outcome is not None:
                on_outcome(outcome)
    return outcomes

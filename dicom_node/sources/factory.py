"""Build the :class:`~dicom_node.sources.base.Source` a poller talks to, and what its series are recorded as."""

from __future__ import annotations

from dicom_node.config import NodeConfig
from dicom_node.config.sources import Poller, SourcesConfig
from dicom_node.errors import ConfigError
from dicom_node.sources.base import Source
from dicom_node.sources.dicomweb import DicomwebSource
from dicom_node.sources.dimse import DimseSource
from dicom_node.sources.sink import NodeStorage


def make_source(config: NodeConfig, poller: Poller, node: NodeStorage) -> Source:
    """The source of ``poller``: a DICOMweb server, or a DIMSE remote (imported only when used).

    Parameters
    ----------
    config : NodeConfig
        The node configuration (``config.sources.remotes`` resolves a DIMSE poller's remote).
    poller : Poller
        The ``[[sources.pollers]]`` entry.
    node : NodeStorage
        Storage the source stages into (the node, or a command's local storage).

    Raises
    ------
    ConfigError
        A DIMSE poller names a remote that is not configured.
    """
    if poller.kind == "dicomweb":
        return DicomwebSource(poller, node)
    if poller.kind == "object":  # listed and read by sources.objects.ObjectPollCycle, not a query source
        raise ConfigError(f"sources.pollers {poller.name!r}: an object poller is not a DICOMweb or DIMSE source")
    remote = config.sources.remote(poller.remote)
    if remote is None:
        raise ConfigError(f"sources.pollers {poller.name!r}: remote {poller.remote!r} is not in [[sources.remotes]]")
    return DimseSource(remote, node)


def source_label(poller: Poller) -> str:
    """What ``instances.source`` records for what ``poller`` brings in (``dicomweb:<name>``, ``object:<name>``,
    ``qr:<remote>``)."""
    if poller.kind in ("dicomweb", "object"):
        return f"{poller.kind}:{poller.name}"
    return f"qr:{poller.remote}"


def source_rules(sources: SourcesConfig) -> dict[str, list[str]]:
    """Recorded source -> the routing rules allowed for its series, for pollers that restrict them.

    Pollers recording the same source (two DIMSE pollers of one remote) share one
    entry holding the union of their rules; a poller without ``rules`` lifts the
    restriction for its source altogether.
    """
    allowed: dict[str, list[str] | None] = {}
    for poller in sources.pollers:
        label = source_label(poller)
        if not poller.rules or allowed.get(label, []) is None:
            allowed[label] = None
            continue
        merged = allowed.get(label)
        if merged is None:  # first poller for this label (a None entry was skipped above)
            merged = allowed[label] = []
        merged.extend(r for r in poller.rules if r not in merged)
    return {label: rules for label, rules in allowed.items() if rules is not None}

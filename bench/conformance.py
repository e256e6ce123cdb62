"""Print the decode conformance table (counts per transfer syntax) in Markdown.

Usage: ``python bench/conformance.py [--details]``

Decodes every pixel-data file of pydicom's bundled test files and pydicom-data,
plus generated HTJ2K / JPEG Process 14 files (when imagecodecs is installed),
and compares each with an independent reference; see
:mod:`dicom_node.pixels.conformance`.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import warnings
from pathlib import Path

from dicom_node.errors import UnsupportedTransferSyntaxError
from dicom_node.pixels import conformance


def main() -> int:
    """Run the conformance check and print the table; exit 1 on any mismatch."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--details", action="store_true", help="list every file that is not decoded exactly")
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # pydicom warns about the deliberately broken corpus files
    logging.basicConfig(level=logging.WARNING)
    results = conformance.run()
    corpus_count = len(results)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            results += conformance.run_generated(Path(tmp))
        except UnsupportedTransferSyntaxError as exc:
            print(f"generated files skipped: {exc}")
    print(f"Decode conformance: {corpus_count} corpus files + {len(results) - corpus_count} generated files\n")
    print(conformance.markdown_table(results))
    if args.details:
        print("\n| File | Transfer syntax | Outcome | Reference | Detail |\n|---|---|---|---|---|")
        for r in results:
            if r.outcome != "exact":
                print(f"| {r.name} | {r.transfer_syntax} | {r.outcome} | {r.reference} | {r.detail.replace('|', '/')} |")
    return 1 if any(r.outcome == "mismatch" for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Accept negotiation by PS3.18 8.7: media ranges, type=, transfer-syntax (incl. *), q-values, 406 with a reason."""

from __future__ import annotations

import pytest

from dicom_node.dicomweb.accept import MediaRange, NotAcceptable, Offer, choose, parse_accept

ELE = "1.2.840.10008.1.2.1"
JLS = "1.2.840.10008.1.2.4.80"
J2K = "1.2.840.10008.1.2.4.90"
BASELINE = "1.2.840.10008.1.2.4.50"

#: A JPEG-LS instance as stored, then decoded, then re-encoded.
DICOM = [Offer("application/dicom", JLS, True), Offer("application/dicom", ELE, True),
         Offer("application/dicom", J2K, True)]
FRAMES = [Offer("image/jls", JLS, True), Offer("application/octet-stream", ELE, True)]


def test_parse_ranges_params_quotes_and_q() -> None:
    ranges = parse_accept('multipart/related; type="application/dicom"; transfer-syntax=*; q=0.5, '
                          'application/dicom+json, image/*;q=0.1, garbage, *')
    assert ranges[0] == MediaRange("multipart/related", "application/dicom", "*", 0.5)
    assert ranges[1] == MediaRange("application/dicom+json")
    assert ranges[2].q == 0.1 and ranges[2].media_type == "image/*"
    assert ranges[3].media_type == "*/*" and len(ranges) == 4
    assert parse_accept(None) == parse_accept("  ") == [MediaRange("*/*")]
    assert parse_accept('multipart/related; type="image/jpeg, x"')[0].part_type == "image/jpeg, x"


def test_absent_accept_and_star_star_give_the_stored_representation() -> None:
    assert choose(None, DICOM) == DICOM[0]
    assert choose("*/*", DICOM) == DICOM[0]
    assert choose('multipart/related; type="application/dicom"; transfer-syntax=*', DICOM) == DICOM[0]
    assert choose("multipart/*", DICOM) == DICOM[0]


def test_no_transfer_syntax_means_the_media_types_default() -> None:
    assert choose('multipart/related; type="application/dicom"', DICOM) == DICOM[1]
    assert choose('multipart/related; type="application/octet-stream"', FRAMES) == FRAMES[1]
    assert choose("multipart/related; type=image/jls", FRAMES) == FRAMES[0]


def test_named_syntax_and_q_values() -> None:
    assert choose(f"multipart/related; type=application/dicom; transfer-syntax={J2K}", DICOM) == DICOM[2]
    accept = (f'multipart/related; type="application/dicom"; transfer-syntax={ELE}; q=0.4, '
              f'multipart/related; type="application/dicom"; transfer-syntax={J2K}; q=0.9')
    assert choose(accept, DICOM) == DICOM[2]
    # A more specific q=0 range excludes what a broader range allows.
    accept = f"multipart/related; type=application/dicom; transfer-syntax={JLS}; q=0, */*"
    assert choose(accept, DICOM) == DICOM[1]


def test_406_names_what_was_asked_and_what_exists() -> None:
    with pytest.raises(NotAcceptable) as err:
        choose(f"multipart/related; type=application/dicom; transfer-syntax={BASELINE}", DICOM)
    assert BASELINE in err.value.reason and JLS in err.value.reason and ELE in err.value.reason
    with pytest.raises(NotAcceptable):
        choose("application/json", DICOM)
    with pytest.raises(NotAcceptable):
        choose("*/*;q=0", DICOM)


def test_single_part_offers_and_subtype_wildcards() -> None:
    offers = [Offer("image/jpeg"), Offer("image/png")]
    assert choose("image/png", offers) == offers[1]
    assert choose("image/*", offers) == offers[0]
    assert choose("image/png, image/jpeg;q=0.5", offers) == offers[1]
    meta = [Offer("application/dicom+json"), Offer("application/json")]
    assert choose("application/json", meta) == meta[1]
    assert choose("application/dicom+json, application/json", meta) == meta[0]
    assert str(Offer("application/octet-stream", ELE, True)) == (
        f'multipart/related; type="application/octet-stream"; transfer-syntax={ELE}')

"""Derivatives say what was done to them in their own metadata (XMP, ImageDescription, Software).

Unit tests of the pure builder and the container writers, then one real flow run on a tiny
collection (a grey TIFF with XMP, colorized by a stand-in model, and a colour PNG).
"""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import pyvips
import tifffile

from daguerre import __version__
from daguerre.imaging.embed import JPEG_EXTENDED_XMP_HEADER, embed_jpeg, embed_webp
from daguerre.imaging.large import write_access
from daguerre.imaging.tiffexif import exif_blob, exif_text, update_first_ifd
from daguerre.provenance_metadata import (
    COLOUR_NOTICE,
    IPTC_EXT,
    JPEG_XMP_LIMIT,
    NAMESPACE,
    RDF,
    ST_EVT,
    ST_REF,
    XMP_MM,
    XMP_NOTE,
    build_xmp,
    image_description,
    jpeg_xmp,
    provenance_from,
    usable_description,
)
from daguerre.records import AssetFacts, StepFacts, StepStatus
from tests.helpers import tree_hashes

SHA = "ab" * 32
WEIGHTS = "cd" * 32
MASTER_XMP = (
    b'<?xpacket begin="\xef\xbb\xbf" id="W5M0MpCehiHzreSzNTczkc9d"?>'
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
    b'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    b'<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/" '
    b'xmlns:photoshop="http://ns.adobe.com/photoshop/1.0/">'
    b"<dc:creator><rdf:Seq><rdf:li>Archive</rdf:li></rdf:Seq></dc:creator>"
    b'<dc:rights><rdf:Alt><rdf:li xml:lang="x-default">CC BY 4.0</rdf:li></rdf:Alt></dc:rights>'
    b"<photoshop:Source>Box 12 &amp; 13</photoshop:Source>"
    b'</rdf:Description></rdf:RDF></x:xmpmeta><?xpacket end="w"?>'
)


def _q(namespace: str, local: str) -> str:
    return f"{{{namespace}}}{local}"


def _asset(fmt: str = "tiff") -> AssetFacts:
    return AssetFacts(
        source_uri="file:///archive/box12/scan.tif",
        relative_path="box12/scan.tif",
        sha256=SHA,
        bytes=1000,
        format=fmt,
    )


def _steps(colorize: bool) -> list[StepFacts]:
    now = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    steps = [
        StepFacts(stage="detect", order=0, status=StepStatus.APPLIED, operator="daguerre.detect"),
        StepFacts(
            stage="denoise",
            order=1,
            status=StepStatus.APPLIED,
            operator="opencv.nlm",
            operator_version="4.10",
            parameters={"sigma": 4.0},
            started_at=now,
        ),
        StepFacts(stage="inpaint", order=2, status=StepStatus.SKIPPED, reason="no damage"),
    ]
    steps.append(
        StepFacts(
            stage="colorize",
            order=5,
            status=StepStatus.APPLIED if colorize else StepStatus.SKIPPED,
            operator="daguerre-colorize-s" if colorize else None,
            operator_version="1" if colorize else None,
            weights_sha256=WEIGHTS if colorize else None,
            reason=None if colorize else "image is in colour",
        )
    )
    return steps


def _parse(xmp: bytes) -> ET.Element:
    return ET.fromstring(xmp.decode("utf-8").split("?>", 1)[1].rsplit("<?xpacket", 1)[0])


def _daguerre_steps(root: ET.Element) -> list[dict[str, str]]:
    (steps,) = root.iter(_q(NAMESPACE, "steps"))
    return [
        {child.tag.split("}")[1]: child.text or "" for child in li}
        for li in steps.iter(_q(RDF, "li"))
    ]


def _value(root: ET.Element, namespace: str, local: str) -> str | None:
    found = [e.text for e in root.iter(_q(namespace, local))]
    assert len(found) <= 1, f"{local} appears {len(found)} times"
    return found[0] if found else None


# ----------------------------------------------------------------------------- the builder


def test_xmp_lists_the_applied_steps_and_keeps_the_masters_fields() -> None:
    provenance = provenance_from(_asset(), 42, _steps(colorize=True), when=datetime.now(UTC))
    xmp = build_xmp(provenance, master_xmp=MASTER_XMP, width=640, height=480, mime="image/tiff")
    root = _parse(xmp)
    steps = _daguerre_steps(root)
    assert [s["stage"] for s in steps] == ["detect", "denoise", "colorize"]  # skipped: left out
    assert steps[1]["operator"] == "opencv.nlm" and steps[1]["operatorVersion"] == "4.10"
    assert steps[2]["weightsSha256"] == WEIGHTS
    assert _value(root, NAMESPACE, "runId") == "42"
    assert _value(root, NAMESPACE, "masterSha256") == SHA
    assert _value(root, NAMESPACE, "software") == f"Daguerre {__version__}"
    assert _value(root, NAMESPACE, "colorized") == "True"
    assert COLOUR_NOTICE in _value(root, NAMESPACE, "summary")
    assert _value(root, ST_REF, "instanceID") == f"urn:sha256:{SHA}"
    assert _value(root, ST_REF, "documentID") == f"urn:sha256:{SHA}"
    actions = [e.text for e in root.iter(_q(ST_EVT, "action"))]
    assert actions == ["edited", "edited", "converted"]
    agents = {e.text for e in root.iter(_q(ST_EVT, "softwareAgent"))}
    assert agents == {f"Daguerre {__version__}"}
    parameters = [e.text for e in root.iter(_q(ST_EVT, "parameters"))]
    assert "daguerre-colorize-s" in parameters[1] and WEIGHTS in parameters[1]
    assert "compositeWithTrainedAlgorithmicMedia" in _value(root, IPTC_EXT, "DigitalSourceType")
    # The master's own fields are all there.
    assert [e.text for e in root.iter(_q(RDF, "li")) if e.text == "Archive"] == ["Archive"]
    assert "CC BY 4.0" in xmp.decode() and "Box 12 &amp; 13" in xmp.decode()
    assert b"xmlns:photoshop=" in xmp and b"xmlns:dc=" in xmp  # the master's prefixes too


def test_merging_keeps_history_and_ids_and_replaces_an_earlier_daguerre_block() -> None:
    master = (
        b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
        b'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description rdf:about="" '
        b'xmlns:xmpMM="http://ns.adobe.com/xap/1.0/mm/" '
        b'xmlns:stEvt="http://ns.adobe.com/xap/1.0/sType/ResourceEvent#" '
        b'xmlns:tiff="http://ns.adobe.com/tiff/1.0/" '
        b'xmpMM:DocumentID="xmp.did:master" xmpMM:InstanceID="xmp.iid:master" '
        b'tiff:Orientation="6"><xmpMM:History><rdf:Seq><rdf:li rdf:parseType="Resource">'
        b"<stEvt:action>created</stEvt:action><stEvt:softwareAgent>Scanner 2</stEvt:softwareAgent>"
        b"</rdf:li></rdf:Seq></xmpMM:History></rdf:Description></rdf:RDF></x:xmpmeta>"
    )
    provenance = provenance_from(_asset(), 1, _steps(colorize=False))
    first = build_xmp(provenance, master_xmp=master, width=10, height=10, mime="image/tiff")
    root = _parse(first)
    assert _value(root, ST_REF, "documentID") == "xmp.did:master"
    assert _value(root, ST_REF, "instanceID") == "xmp.iid:master"
    assert _value(root, XMP_MM, "OriginalDocumentID") == "xmp.did:master"
    assert b'xmpMM:DocumentID="xmp.did:master"' not in first  # the derivative is not the master
    assert [e.text for e in root.iter(_q(ST_EVT, "action"))] == ["created", "edited", "converted"]
    assert len(list(root.iter(_q(XMP_MM, "History")))) == 1
    assert b'tiff:Orientation="1"' in first  # our pixels are upright
    assert "algorithmicallyEnhanced" in _value(root, IPTC_EXT, "DigitalSourceType")
    assert _value(root, NAMESPACE, "colorized") == "False"
    # A derivative restored again: one Daguerre block, the history grows.
    second = build_xmp(provenance, master_xmp=first, width=10, height=10, mime="image/tiff")
    root = _parse(second)
    assert len(list(root.iter(_q(NAMESPACE, "steps")))) == 1
    assert len(list(root.iter(_q(XMP_MM, "DerivedFrom")))) == 1
    assert [e.text for e in root.iter(_q(ST_EVT, "action"))].count("converted") == 2


def test_unparseable_master_xmp_is_kept_verbatim() -> None:
    provenance = provenance_from(_asset(), 1, _steps(colorize=False))
    xmp = build_xmp(provenance, master_xmp=b"<x:xmpmeta><broken", mime="image/tiff")
    assert _value(_parse(xmp), NAMESPACE, "masterXmp") == "<x:xmpmeta><broken"


def test_description_keeps_the_masters_and_always_tells_of_colorization() -> None:
    plain = provenance_from(_asset(), 1, _steps(colorize=False))
    colorized = provenance_from(_asset(), 1, _steps(colorize=True))
    summary = image_description(plain, None)
    assert summary == f"Restored by Daguerre {__version__}: denoise (opencv.nlm 4.10)."
    assert "machine interpretation" not in summary
    assert image_description(colorized, None).endswith(COLOUR_NOTICE)
    assert "colorize (daguerre-colorize-s 1)" in image_description(colorized, None)
    assert image_description(plain, "Wedding, 1931") == "Wedding, 1931"
    assert image_description(colorized, "Wedding, 1931") == f"Wedding, 1931 {COLOUR_NOTICE}"
    nothing = provenance_from(_asset(), 1, [_steps(False)[0]])
    assert "no restoration step" in image_description(nothing, None)
    # Machine metadata in ImageDescription is not a description.
    assert usable_description('{"shape": [4, 4]}', b"Wedding\x00") == "Wedding"
    assert usable_description("  ", None) is None


# ----------------------------------------------------------------------------- the containers


def _rgb(h: int = 24, w: int = 32) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.random((h, w, 3)).astype(np.float32)


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
@pytest.mark.parametrize("with_alpha", [False, True])
def test_access_copy_carries_exif_and_xmp(tmp_path: Path, fmt: str, with_alpha: bool) -> None:
    provenance = provenance_from(_asset(), 3, _steps(colorize=True))
    xmp = build_xmp(provenance, master_xmp=MASTER_XMP, width=32, height=24, mime=f"image/{fmt}")
    master_exif = exif_blob(None, {315: "A. Photographer", 270: "old"})
    exif = exif_blob(master_exif, {270: "Restored.", 305: f"Daguerre {__version__}"})
    alpha = np.full((24, 32), 0.5, np.float32) if with_alpha else None
    path = write_access(_rgb(), tmp_path / f"a.{fmt}", alpha=alpha, fmt=fmt, exif=exif, xmp=xmp)
    image = pyvips.Image.new_from_file(str(path))
    assert (image.width, image.height) == (32, 24)
    assert bytes(image.get("xmp-data")) == xmp
    assert image.get("exif-ifd0-Software").startswith(f"Daguerre {__version__}")
    assert image.get("exif-ifd0-ImageDescription").startswith("Restored.")
    assert image.get("exif-ifd0-Artist").startswith("A. Photographer")
    if fmt == "webp" and with_alpha:
        assert image.hasalpha()
    image.numpy()  # the pixels still decode


def test_lossless_webp_gains_an_extended_header(tmp_path: Path) -> None:
    data = pyvips.Image.new_from_array((_rgb() * 255).astype(np.uint8)).webpsave_buffer(
        lossless=True, keep="none"
    )
    assert data[12:16] == b"VP8L"
    out = embed_webp(data, xmp=b"<x:xmpmeta xmlns:x='adobe:ns:meta/'/>")
    assert out[12:16] == b"VP8X"
    image = pyvips.Image.new_from_buffer(out, "")
    assert (image.width, image.height) == (32, 24)
    assert bytes(image.get("xmp-data")).startswith(b"<x:xmpmeta")


def test_a_master_xmp_too_large_for_jpeg_goes_to_extended_xmp() -> None:
    bulky = MASTER_XMP.replace(
        b"<photoshop:Source>",
        b"<photoshop:Instructions>"
        + b"x" * 150_000
        + b"</photoshop:Instructions><photoshop:Source>",
    )
    provenance = provenance_from(_asset(), 3, _steps(colorize=True))
    main, extended = jpeg_xmp(provenance, master_xmp=bulky, width=32, height=24)
    assert extended is not None and len(main) <= JPEG_XMP_LIMIT < len(extended)
    guid = hashlib.md5(extended).hexdigest().upper()
    assert _value(_parse(main), XMP_NOTE, "HasExtendedXMP") == guid
    assert _daguerre_steps(_parse(main)) == _daguerre_steps(_parse(extended))
    jpeg = pyvips.Image.new_from_array((_rgb() * 255).astype(np.uint8)).jpegsave_buffer()
    out = embed_jpeg(jpeg, xmp=main, extended_xmp=extended)
    assert bytes(pyvips.Image.new_from_buffer(out, "").get("xmp-data")) == main
    # Reassemble the extended packet from its segments, as a reader does.
    chunks, at = {}, out.find(JPEG_EXTENDED_XMP_HEADER)
    while at != -1:
        start = at + len(JPEG_EXTENDED_XMP_HEADER)
        assert out[start : start + 32].decode() == guid
        offset = int.from_bytes(out[start + 36 : start + 40], "big")
        length = int.from_bytes(out[at - 2 : at], "big") - 2 - (start + 40 - at)
        chunks[offset] = out[start + 40 : start + 40 + length]
        at = out.find(JPEG_EXTENDED_XMP_HEADER, start)
    assert b"".join(chunks[k] for k in sorted(chunks)) == extended


def test_tiff_description_and_software_replace_the_existing_tags(tmp_path: Path) -> None:
    path = tmp_path / "t.tif"
    tifffile.imwrite(path, np.zeros((16, 16), np.uint8), description="tifffile junk")
    master_exif = exif_blob(None, {270: "The master's", 33432: "(c) Archive"})
    assert exif_text(master_exif, 270) == "The master's"
    assert update_first_ifd(path, master_exif, {270: "Restored.", 305: "Daguerre 9"})
    with tifffile.TiffFile(path) as tif:
        tags = tif.pages[0].tags
        assert tags["ImageDescription"].value == "Restored."
        assert tags["Software"].value == "Daguerre 9"
        assert tags["Copyright"].value == "(c) Archive"
        np.testing.assert_array_equal(tif.asarray(), 0)


# ----------------------------------------------------------------------------- the real flow


class _StandInColorizer:
    """A colorization 'model' for tests: tints the grey view (no weights are shipped)."""

    model_id = "test-colorizer"
    version = "0"
    weights_sha256 = WEIGHTS
    device = "cpu"
    architecture = "test"
    takes_noise_level = False
    scale = 1
    tiling = "supported"
    receptive_overlap = 0

    def run(self, pixels, noise_sigma=None, mask=None):
        grey = pixels.mean(axis=2, keepdims=True)
        return np.clip(np.concatenate([grey * 1.1, grey * 0.9, grey * 0.7], axis=2), 0, 1)


def _masters(root: Path) -> None:
    rng = np.random.default_rng(5)
    y, x = np.mgrid[0:60, 0:80].astype(np.float32)
    base = 0.45 + 0.2 * np.sin(x / 9) * np.cos(y / 11)
    grey = np.clip(base + rng.normal(0, 0.04, base.shape), 0, 1)
    grey[20:22, 5:75] = 0.98  # a scratch: detection stores a damage mask
    image = pyvips.Image.new_from_array(np.rint(grey * 255).astype(np.uint8))
    image = image.copy(interpretation="b-w").copy()
    image.set_type(pyvips.GValue.blob_type, "xmp-data", MASTER_XMP)
    root.mkdir(parents=True)
    image.tiffsave(str(root / "grey.tif"))
    colour = np.stack([base, base * 0.8 + 0.1, 1 - base], axis=2)
    colour = np.clip(colour + rng.normal(0, 0.04, colour.shape), 0, 1)
    pyvips.Image.new_from_array(np.rint(colour * 255).astype(np.uint8)).copy(
        interpretation="srgb"
    ).pngsave(str(root / "colour.png"))


def _run(source: Path, dest: Path, catalog: str):
    from daguerre.flows.restore import restore_collection

    return restore_collection(
        source=str(source),
        dest=str(dest),
        catalog_url=catalog,
        steps=["denoise", "tone", "colorize"],
        device="cpu",
        models={"denoise": "classical"},
    )


@pytest.fixture(scope="module")
def restored(prefect_harness, tmp_path_factory):
    from daguerre import operators
    from daguerre.catalog import Catalog

    work = tmp_path_factory.mktemp("provenance")
    source, dest = work / "masters", work / "restored"
    _masters(source)
    catalog = f"sqlite:///{work / 'catalog.sqlite'}"
    Catalog.open(catalog)
    colorizer = operators.LearnedOperator("colorize", _StandInColorizer())
    with pytest.MonkeyPatch.context() as patch:
        # What resolve_operators gives for colorize on cpu: our stand-in, for this module only.
        patch.setitem(operators._cache, ("colorize", None, "cpu", None), colorizer)
        report = _run(source, dest, catalog)
        outputs = tree_hashes(dest)
        again = _run(source, dest, catalog)
    return source, dest, catalog, report, outputs, again


def _history(catalog: str, master: Path):
    from daguerre.catalog import Catalog

    (history,) = Catalog(catalog).history(str(master))
    return history.facts, history.restorations[0]


def _applied(restoration) -> list[StepFacts]:
    return [s for s in restoration.steps if s.status == "applied" and s.stage != "store"]


@pytest.mark.flow
@pytest.mark.parametrize("name", ["grey.tif", "colour.png"])
def test_flow_labels_every_derivative(restored, name: str) -> None:
    source, dest, catalog, report, _outputs, _again = restored
    assert {i.path: i.status for i in report.images} == {
        "grey.tif": "succeeded",
        "colour.png": "succeeded",
    }, report.images
    facts, restoration = _history(catalog, source / name)
    applied = _applied(restoration)
    colorized = any(s.stage == "colorize" for s in applied)
    assert colorized == (name == "grey.tif")
    derivatives = {d.kind: d for d in restoration.derivatives}
    for derivative in derivatives.values():  # the catalog hashes the files as written
        assert hashlib.sha256(Path(derivative.uri).read_bytes()).hexdigest() == derivative.sha256

    preservation = pyvips.Image.new_from_file(derivatives["preservation"].uri)
    access = pyvips.Image.new_from_file(derivatives["access"].uri)
    for image in (preservation, access):
        root = _parse(bytes(image.get("xmp-data")))
        steps = _daguerre_steps(root)
        assert [s["stage"] for s in steps] == [s.stage for s in applied]
        for got, step in zip(steps, applied, strict=True):
            assert got.get("operator") == step.operator
            assert got.get("weightsSha256") == step.weights_sha256
        assert _value(root, ST_REF, "instanceID") == f"urn:sha256:{facts.sha256}"
        assert _value(root, NAMESPACE, "masterSha256") == facts.sha256
        assert _value(root, NAMESPACE, "runId") == str(report.run_id)
        assert _value(root, NAMESPACE, "colorized") == str(colorized)
        if name == "grey.tif":  # the master's own XMP survives
            assert "Archive" in [e.text for e in root.iter(_q(RDF, "li"))]
            assert "CC BY 4.0" in ET.tostring(root).decode()
    steps = _daguerre_steps(_parse(bytes(preservation.get("xmp-data"))))
    if colorized:
        assert steps[-1]["stage"] == "colorize" and steps[-1]["weightsSha256"] == WEIGHTS

    with tifffile.TiffFile(derivatives["preservation"].uri) as tif:
        tags = tif.pages[0].tags
        description = tags["ImageDescription"].value
        assert tags["Software"].value == f"Daguerre {__version__}"
    assert description.startswith(f"Restored by Daguerre {__version__}: ")
    assert ("machine interpretation" in description) == colorized
    assert access.get("exif-ifd0-ImageDescription").startswith(description)
    assert access.get("exif-ifd0-Software").startswith(f"Daguerre {__version__}")
    if "damage-mask" in derivatives:
        mask = pyvips.Image.new_from_file(derivatives["damage-mask"].uri)
        root = _parse(bytes(mask.get("xmp-data")))
        assert [s["stage"] for s in _daguerre_steps(root)] == ["detect"]
        assert _value(root, NAMESPACE, "role") == "damage-mask"
    else:
        assert name == "colour.png", "the scratched grey master should have a damage mask"


@pytest.mark.flow
def test_rerun_skips_and_leaves_the_labelled_files_alone(restored) -> None:
    _source, dest, _catalog, _report, outputs, again = restored
    assert {i.status for i in again.images} == {"skipped"}
    assert tree_hashes(dest) == outputs


@pytest.mark.flow
def test_the_master_is_not_touched(restored) -> None:
    source, *_ = restored
    master = pyvips.Image.new_from_file(str(source / "grey.tif"))
    assert bytes(master.get("xmp-data")) == MASTER_XMP
    assert sorted(p.name for p in source.iterdir()) == ["colour.png", "grey.tif"]

"""What was done to a derivative, written into the derivative itself: records in, text out.

A derivative that leaves the archive (a preservation TIFF, an access JPEG or WebP, a damage
mask) must still say where it came from and which machine edits it carries, above all that
its colours are an interpretation when it was colorized. This module turns the steps the
catalog records (`StepFacts`) into:

- an XMP packet, merged into the master's own XMP (every field of the master's is kept, bar
  the few that describe the master's file rather than the photograph, see `build_xmp`), with
  a Daguerre block (namespace `NAMESPACE`, prefix `daguerre`), `xmpMM:DerivedFrom`, an
  `xmpMM:History` sequence and the IPTC `Iptc4xmpExt:DigitalSourceType`;
- a one-line description for the TIFF/EXIF ImageDescription and the `Software` string.

Pure: no file I/O; the writers live in `daguerre.imaging.large` and `daguerre.imaging.embed`.
"""

from __future__ import annotations

import hashlib
import io
import json
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from xml.sax.saxutils import escape

from daguerre import __version__
from daguerre.records import PIXEL_STAGES, AssetFacts, StepFacts, StepStatus

# The Daguerre XMP namespace. Written into files that outlive any release: never change it
# (a new, incompatible schema gets a new URI, e.g. .../ns/2.0/). The .example domain is
# reserved (RFC 2606), so the URI can never name anyone else's resource; XMP namespace URIs
# are identifiers, they are not fetched.
NAMESPACE = "https://daguerre.example/ns/1.0/"
PREFIX = "daguerre"
COLOUR_NOTICE = "Colours are a machine interpretation, not a recovery."
# Face models redraw the faces they restore (details come from training data, not the scan).
FACE_NOTICE = "Faces were redrawn by a face restoration model."
# Largest XMP packet in one JPEG APP1 segment: 65535 - 2 (length) - 29 (namespace + NUL).
JPEG_XMP_LIMIT = 65504

RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
X = "adobe:ns:meta/"
XMP = "http://ns.adobe.com/xap/1.0/"
XMP_MM = "http://ns.adobe.com/xap/1.0/mm/"
XMP_NOTE = "http://ns.adobe.com/xmp/note/"
ST_REF = "http://ns.adobe.com/xap/1.0/sType/ResourceRef#"
ST_EVT = "http://ns.adobe.com/xap/1.0/sType/ResourceEvent#"
DC = "http://purl.org/dc/elements/1.1/"
TIFF = "http://ns.adobe.com/tiff/1.0/"
EXIF = "http://ns.adobe.com/exif/1.0/"
IPTC_EXT = "http://iptc.org/std/Iptc4xmpExt/2008-02-29/"
XML = "http://www.w3.org/XML/1998/namespace"
# Preferred prefixes of the namespaces we write (a master's own prefixes win for its fields).
PREFIXES = {
    X: "x",
    RDF: "rdf",
    XMP: "xmp",
    XMP_MM: "xmpMM",
    XMP_NOTE: "xmpNote",
    ST_REF: "stRef",
    ST_EVT: "stEvt",
    DC: "dc",
    TIFF: "tiff",
    EXIF: "exif",
    IPTC_EXT: "Iptc4xmpExt",
    NAMESPACE: PREFIX,
}
# IPTC Digital Source Type vocabulary (cv.iptc.org/newscodes/digitalsourcetype/).
SOURCE_TYPE_LEARNED = (
    "http://cv.iptc.org/newscodes/digitalsourcetype/compositeWithTrainedAlgorithmicMedia"
)
SOURCE_TYPE_ALGORITHMIC = "http://cv.iptc.org/newscodes/digitalsourcetype/algorithmicallyEnhanced"

MIME_TYPES = {
    "jpeg": "image/jpeg",
    "png": "image/png",
    "tiff": "image/tiff",
    "webp": "image/webp",
    "gif": "image/gif",
    "jp2": "image/jp2",
    "bmp": "image/bmp",
    "heif": "image/heif",
    "jxl": "image/jxl",
}

_PACKET_BEGIN = '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
_PACKET_END = '\n<?xpacket end="w"?>'


def _q(namespace: str, local: str) -> str:
    return f"{{{namespace}}}{local}"


# Master fields that describe the master's file, not the photograph: replaced for the
# derivative (when the master has them) so a reader does not rotate or size it wrongly.
_ORIENTATION = (_q(TIFF, "Orientation"),)
_WIDTHS = (_q(TIFF, "ImageWidth"), _q(EXIF, "PixelXDimension"))
_HEIGHTS = (_q(TIFF, "ImageLength"), _q(EXIF, "PixelYDimension"))
_FORMAT = (_q(DC, "format"),)


@dataclass(frozen=True)
class Provenance:
    """The facts a derivative carries about itself. `steps`: applied steps, in order."""

    run_id: int
    master_uri: str
    master_sha256: str
    master_page: int
    master_format: str | None
    steps: tuple[StepFacts, ...]
    when: datetime | None = None  # when the derivatives were written
    version: str = __version__
    code_version: str | None = None
    role: str = "derivative"  # or "damage-mask"

    @property
    def software(self) -> str:
        return f"Daguerre {self.version}"

    @property
    def edits(self) -> tuple[StepFacts, ...]:
        """The applied pixel stages (what changed the pixels), in order."""
        return tuple(s for s in self.steps if s.stage in PIXEL_STAGES)

    @property
    def colorized(self) -> bool:
        return self.role == "derivative" and any(s.stage == "colorize" for s in self.edits)

    @property
    def faces_redrawn(self) -> bool:
        return self.role == "derivative" and any(s.stage == "face" for s in self.edits)

    @property
    def learned(self) -> bool:
        """True when a trained model (an operator with weights) changed the pixels."""
        return any(s.weights_sha256 for s in self.edits)

    @property
    def summary(self) -> str:
        if self.role == "damage-mask":
            return (
                f"Damage mask computed by {self.software} from the master "
                "(white: damaged pixels to restore)."
            )
        if not self.edits:
            return f"Converted by {self.software}; no restoration step was applied."
        done = ", ".join(f"{s.stage} ({_operator_label(s)})" for s in self.edits)
        text = f"Restored by {self.software}: {done}."
        if self.faces_redrawn:
            text = f"{text} {FACE_NOTICE}"
        return f"{text} {COLOUR_NOTICE}" if self.colorized else text

    def for_damage_mask(self) -> Provenance:
        """The provenance of the damage mask: the detection step only."""
        detect = tuple(s for s in self.steps if s.stage == "detect")
        return replace(self, steps=detect, role="damage-mask")


def _operator_label(step: StepFacts) -> str:
    name = step.operator or "unknown operator"
    return f"{name} {step.operator_version}" if step.operator_version else name


def provenance_from(
    asset: AssetFacts,
    run_id: int,
    steps: Iterable[StepFacts],
    *,
    when: datetime | None = None,
    code_version: str | None = None,
) -> Provenance:
    """A Provenance from the steps run so far (skipped and failed ones are left out)."""
    applied: dict[int, StepFacts] = {}
    for step in steps:
        if step.status == StepStatus.APPLIED:
            applied[step.order] = step
    return Provenance(
        run_id=run_id,
        master_uri=asset.source_uri,
        master_sha256=asset.sha256,
        master_page=asset.page,
        master_format=asset.format,
        steps=tuple(applied[k] for k in sorted(applied)),
        when=when,
        code_version=code_version,
    )


def usable_description(*candidates: str | bytes | None) -> str | None:
    """The first candidate that is a description a person wrote, or None.

    Blank values and the machine metadata some writers put in ImageDescription (tifffile's
    JSON shape, ImageJ's key=value header) do not count.
    """
    for value in candidates:
        if isinstance(value, bytes):
            value = value.rstrip(b"\x00").decode("utf-8", errors="replace")
        text = (value or "").strip()
        if not text or text.startswith(("{", "ImageJ=")):
            continue
        return text
    return None


def image_description(provenance: Provenance, master_description: str | None) -> str:
    """The TIFF/EXIF ImageDescription: the master's when it has one, else the summary.

    A colorized derivative always says so, even under the master's own description.
    """
    if master_description is None:
        return provenance.summary
    if provenance.colorized and COLOUR_NOTICE not in master_description:
        return f"{master_description} {COLOUR_NOTICE}"
    return master_description


# --------------------------------------------------------------------------- XMP


def build_xmp(
    provenance: Provenance,
    *,
    master_xmp: bytes | None = None,
    width: int | None = None,
    height: int | None = None,
    mime: str | None = None,
    extended_guid: str | None = None,
) -> bytes:
    """A UTF-8 XMP packet for a derivative of `width` x `height` px in format `mime`.

    The master's XMP, when given and parseable, is kept field for field, with these changes:
    its `xmpMM:DocumentID`/`InstanceID` become our `xmpMM:DerivedFrom` (its old DerivedFrom
    is kept as `daguerre:masterDerivedFrom`; its DocumentID becomes `xmpMM:OriginalDocumentID`
    when it has none), our events are appended to its `xmpMM:History`, `tiff:Orientation`,
    the pixel dimensions and `dc:format` (when present) describe the derivative, and a
    Daguerre block of an earlier restoration is replaced. A master XMP that does not parse is
    kept verbatim as the text of `daguerre:masterXmp`. `extended_guid` adds
    `xmpNote:HasExtendedXMP` (JPEG extended XMP, see `jpeg_xmp`).
    """
    root: ET.Element | None = None
    prefixes: dict[str, str] = {}
    raw_master: str | None = None
    if master_xmp:
        parsed = _parse(master_xmp)
        if parsed is None:
            raw_master = master_xmp.rstrip(b"\x00").decode("utf-8", errors="replace")
        else:
            root, prefixes = parsed
    if root is None:
        root = ET.Element(_q(X, "xmpmeta"))
        ET.SubElement(root, _q(RDF, "RDF"))
    rdf = root if root.tag == _q(RDF, "RDF") else root.find(f".//{_q(RDF, 'RDF')}")
    assert rdf is not None  # _parse only returns trees with one
    # A derivative whose pixels we changed gets its own IPTC digital source type.
    source_type = None
    if provenance.edits and provenance.role == "derivative":
        source_type = SOURCE_TYPE_LEARNED if provenance.learned else SOURCE_TYPE_ALGORITHMIC
    master = _take_master_fields(rdf, width, height, mime, source_type is not None)
    ours = ET.SubElement(rdf, _q(RDF, "Description"), {_q(RDF, "about"): master.about})
    _daguerre_block(ours, provenance, master, raw_master)
    _derived_from(ours, provenance, master)
    history = master.history
    if history is None:
        history = ET.SubElement(ET.SubElement(ours, _q(XMP_MM, "History")), _q(RDF, "Seq"))
    for event in _events(provenance, mime):
        _resource(ET.SubElement(history, _q(RDF, "li")), ST_EVT, event)
    if source_type is not None:
        _text(ours, IPTC_EXT, "DigitalSourceType", source_type)
    if extended_guid is not None:
        _text(ours, XMP_NOTE, "HasExtendedXMP", extended_guid)
    if root.tag == _q(RDF, "RDF"):  # a bare rdf:RDF master: wrap it as XMP packets are
        wrapper = ET.Element(_q(X, "xmpmeta"))
        wrapper.append(root)
        root = wrapper
    return (_PACKET_BEGIN + _serialise(root, prefixes) + _PACKET_END).encode("utf-8")


def jpeg_xmp(
    provenance: Provenance,
    *,
    master_xmp: bytes | None,
    width: int,
    height: int,
) -> tuple[bytes, bytes | None]:
    """The XMP of a JPEG: (main packet, extended packet or None).

    A merged packet too large for one APP1 segment goes whole into the extended XMP, and the
    main packet carries our fields alone (so a reader that ignores extended XMP still sees
    the provenance) plus `xmpNote:HasExtendedXMP`, the extended packet's MD5 (uppercase hex).
    """
    full = build_xmp(
        provenance, master_xmp=master_xmp, width=width, height=height, mime="image/jpeg"
    )
    if len(full) <= JPEG_XMP_LIMIT:
        return full, None
    guid = hashlib.md5(full, usedforsecurity=False).hexdigest().upper()
    main = build_xmp(provenance, width=width, height=height, mime="image/jpeg", extended_guid=guid)
    if len(main) > JPEG_XMP_LIMIT:
        raise ValueError(f"the provenance XMP alone is {len(main)} bytes, too large for JPEG")
    return main, full


@dataclass
class _MasterFields:
    about: str = ""
    document_id: str | None = None
    instance_id: str | None = None
    original_document_id: str | None = None
    derived_from: ET.Element | None = None
    source_type: str | None = None
    history: ET.Element | None = None  # the master's xmpMM:History rdf:Seq


def _parse(data: bytes) -> tuple[ET.Element, dict[str, str]] | None:
    """The master's XMP tree and its prefixes (namespace -> prefix), or None if unusable."""
    data = data.strip(b"\x00 \t\r\n")
    prefixes: dict[str, str] = {}
    try:
        events = ET.iterparse(io.BytesIO(data), events=("start-ns",))
        for _, (prefix, uri) in events:
            prefixes.setdefault(uri, prefix)
        root = events.root  # type: ignore[attr-defined]
    except (ET.ParseError, ValueError):
        return None
    if root.tag != _q(RDF, "RDF") and root.find(f".//{_q(RDF, 'RDF')}") is None:
        return None
    return root, prefixes


def _take_master_fields(
    rdf: ET.Element,
    width: int | None,
    height: int | None,
    mime: str | None,
    replace_source_type: bool,
) -> _MasterFields:
    """Remove from the master's descriptions what we replace, and note it; update the fields
    that describe the file (orientation, pixel size, format)."""
    found = _MasterFields()
    updates: dict[str, str] = {_ORIENTATION[0]: "1"}
    for name in _WIDTHS:
        if width is not None:
            updates[name] = str(width)
    for name in _HEIGHTS:
        if height is not None:
            updates[name] = str(height)
    if mime is not None:
        updates[_FORMAT[0]] = mime
    captured = {
        _q(XMP_MM, "DocumentID"): "document_id",
        _q(XMP_MM, "InstanceID"): "instance_id",
    }
    if replace_source_type:
        captured[_q(IPTC_EXT, "DigitalSourceType")] = "source_type"
    for desc in rdf.findall(_q(RDF, "Description")):
        found.about = desc.get(_q(RDF, "about"), found.about)
        for name in list(desc.attrib):
            value = desc.attrib[name]
            if name.startswith(f"{{{NAMESPACE}}}"):
                del desc.attrib[name]
            elif name in captured:
                setattr(found, captured[name], value)
                del desc.attrib[name]
            elif name == _q(XMP_MM, "OriginalDocumentID"):
                found.original_document_id = value
            elif name in updates:
                desc.attrib[name] = updates[name]
        for child in list(desc):
            if child.tag.startswith(f"{{{NAMESPACE}}}"):
                desc.remove(child)
            elif child.tag in captured:
                value = child.text or child.get(_q(RDF, "resource")) or ""
                setattr(found, captured[child.tag], value.strip() or None)
                desc.remove(child)
            elif child.tag == _q(XMP_MM, "OriginalDocumentID"):
                found.original_document_id = (child.text or "").strip() or None
            elif child.tag == _q(XMP_MM, "DerivedFrom"):
                desc.remove(child)
                child.tag = _q(NAMESPACE, "masterDerivedFrom")
                found.derived_from = child
            elif child.tag == _q(XMP_MM, "History") and found.history is None:
                seq = child.find(_q(RDF, "Seq"))
                if seq is None:
                    child.clear()
                    child.attrib.clear()
                    seq = ET.SubElement(child, _q(RDF, "Seq"))
                found.history = seq
            elif child.tag in updates and len(child) == 0:
                child.text = updates[child.tag]
    return found


def _text(parent: ET.Element, namespace: str, local: str, value: str) -> ET.Element:
    element = ET.SubElement(parent, _q(namespace, local))
    element.text = value
    return element


def _resource(element: ET.Element, namespace: str, fields: dict[str, str]) -> None:
    """Fill `element` as an XMP struct (rdf:parseType="Resource") of simple fields."""
    element.set(_q(RDF, "parseType"), "Resource")
    for local, value in fields.items():
        _text(element, namespace, local, value)


def _daguerre_block(
    desc: ET.Element, provenance: Provenance, master: _MasterFields, raw_master: str | None
) -> None:
    p = provenance
    _text(desc, NAMESPACE, "software", p.software)
    if p.code_version:
        _text(desc, NAMESPACE, "codeVersion", p.code_version)
    _text(desc, NAMESPACE, "runId", str(p.run_id))
    _text(desc, NAMESPACE, "role", p.role)
    _text(desc, NAMESPACE, "masterUri", p.master_uri)
    _text(desc, NAMESPACE, "masterSha256", p.master_sha256)
    _text(desc, NAMESPACE, "masterPage", str(p.master_page))
    _text(desc, NAMESPACE, "colorized", "True" if p.colorized else "False")
    _text(desc, NAMESPACE, "summary", p.summary)
    seq = ET.SubElement(ET.SubElement(desc, _q(NAMESPACE, "steps")), _q(RDF, "Seq"))
    for step in p.steps:
        fields = {"stage": step.stage, "order": str(step.order)}
        if step.operator:
            fields["operator"] = step.operator
        if step.operator_version:
            fields["operatorVersion"] = step.operator_version
        if step.weights_sha256:
            fields["weightsSha256"] = step.weights_sha256
        if step.device:
            fields["device"] = step.device
        if step.parameters:
            fields["parameters"] = json.dumps(step.parameters, sort_keys=True, default=str)
        if step.output_sha256:
            fields["outputSha256"] = step.output_sha256
        _resource(ET.SubElement(seq, _q(RDF, "li")), NAMESPACE, fields)
    if master.source_type is not None:
        _text(desc, NAMESPACE, "masterDigitalSourceType", master.source_type)
    if master.derived_from is not None:
        desc.append(master.derived_from)
    if raw_master is not None:
        _text(desc, NAMESPACE, "masterXmp", raw_master)


def _derived_from(desc: ET.Element, provenance: Provenance, master: _MasterFields) -> None:
    content_id = f"urn:sha256:{provenance.master_sha256}"
    ref = {
        # The master's own identifiers when it has them (what a DAM links on), else its hash.
        "documentID": master.document_id or content_id,
        "instanceID": master.instance_id or content_id,
        "filePath": provenance.master_uri,
    }
    if provenance.master_page:
        ref["filePath"] += f"#page={provenance.master_page}"
    _resource(ET.SubElement(desc, _q(XMP_MM, "DerivedFrom")), ST_REF, ref)
    if master.original_document_id is None and master.document_id is not None:
        _text(desc, XMP_MM, "OriginalDocumentID", master.document_id)


def _events(provenance: Provenance, mime: str | None) -> list[dict[str, str]]:
    """xmpMM:History events (stEvt fields): one per edit, then the conversion."""
    p = provenance
    events = []
    when = p.when.isoformat() if p.when else None
    if p.role == "damage-mask":
        detect = ", ".join(_operator_label(s) for s in p.steps) or "damage detection"
        event = {"action": "created", "softwareAgent": p.software}
        event["parameters"] = f"damage mask by {detect}"
        if when:
            event["when"] = when
        return [event]
    for step in p.edits:
        text = f"{step.stage}: {_operator_label(step)}"
        if step.weights_sha256:
            text += f" (weights sha256 {step.weights_sha256})"
        if step.stage == "colorize":
            text += f"; {COLOUR_NOTICE}"
        elif step.stage == "face":
            text += f"; {FACE_NOTICE}"
        event = {"action": "edited", "softwareAgent": p.software, "parameters": text}
        if step.started_at:
            event["when"] = step.started_at.isoformat()
        events.append(event)
    source = MIME_TYPES.get(p.master_format or "")
    text = f"from {source} to {mime}" if source and mime else f"to {mime or 'derivative'}"
    event = {"action": "converted", "softwareAgent": p.software, "parameters": text}
    if when:
        event["when"] = when
    events.append(event)
    return events


# --------------------------------------------------------------------------- serialising


def _serialise(root: ET.Element, preferred: dict[str, str]) -> str:
    """XML text of the tree, namespaces declared once on the root with the master's prefixes
    (ElementTree would rename them ns0, ns1...; its prefix registry is process-global)."""
    chosen: dict[str, str] = {}
    taken: set[str] = {"xml", "xmlns"}

    def prefix(uri: str) -> str:
        if uri == XML:
            return "xml"
        if uri not in chosen:
            name = preferred.get(uri) or PREFIXES.get(uri) or "ns"
            base, n = name, 1
            while name in taken:
                name, n = f"{base}{n}", n + 1
            chosen[uri] = name
            taken.add(name)
        return chosen[uri]

    def qname(tag: str) -> str:
        if tag.startswith("{"):
            uri, local = tag[1:].split("}", 1)
            return f"{prefix(uri)}:{local}"
        return tag

    def attribute(value: str) -> str:
        return escape(value, {'"': "&quot;", "\n": "&#10;", "\r": "&#13;", "\t": "&#9;"})

    parts: list[str] = []

    def walk(element: ET.Element, depth: int) -> None:
        if not isinstance(element.tag, str):
            return  # comments and processing instructions are dropped by the parser anyway
        pad = "\n" + " " * depth
        attrs = "".join(f' {qname(k)}="{attribute(v)}"' for k, v in element.attrib.items())
        parts.append(f"{pad}<{qname(element.tag)}{attrs}")
        if depth == 0:
            parts.append("\x00")  # where the namespace declarations go
        children = list(element)
        text = element.text or ""
        if not children and not text:
            parts.append("/>")
        elif not children:
            parts.append(f">{escape(text)}</{qname(element.tag)}>")
        else:
            parts.append(">" + (escape(text) if text.strip() else ""))
            for child in children:
                walk(child, depth + 1)
                if child.tail and child.tail.strip():
                    parts.append(escape(child.tail))
            parts.append(f"{pad}</{qname(element.tag)}>")

    walk(root, 0)
    declarations = "".join(f' xmlns:{p}="{attribute(u)}"' for u, p in chosen.items())
    return "".join(parts).replace("\x00", declarations, 1).lstrip("\n")

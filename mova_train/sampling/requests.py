"""Generation requests: one prompt (+ optional first frame, given audio or given video) with its sampling settings.

A requests file is JSONL (one JSON object per line; blank lines and lines starting with ``#`` are skipped) or
YAML (a list of mappings, or a mapping with a ``requests:`` list). Each entry needs ``prompt``; every other
field falls back to a `SamplingSettings` object (the ``sampling`` block of ``conf/predict.yaml``)::

    {"prompt": "A red ball bounces, with a click at each bounce.", "first_frame": "ball.png", "seed": 3}
    {"prompt": "Rain on a window.", "num_frames": 97, "steps": 25, "cfg_scale": 4.0}
    {"prompt": "A woman speaks to the camera.", "audio": "voice.wav", "first_frame": "face.png"}
    {"prompt": "Footsteps on gravel.", "video": "walk.mp4"}

The mode of a request follows from what it carries (`Request.mode`): ``video`` -> ``v2a`` (sound for the given
frames), ``audio`` -> ``a2v`` (video for the given track, with or without a first frame), a first frame ->
``i2av``, nothing -> ``t2av``. Relative ``first_frame``/``audio``/``video`` paths are resolved against the
requests file's folder. Errors name the file, the line (JSONL and YAML) and the field, and absurd sizes, rates
or lengths are refused here, before anything is allocated.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

__all__ = [
    "LIMITS",
    "Request",
    "RequestError",
    "SamplingSettings",
    "load_requests",
    "make_request",
    "request_name",
    "slugify",
]


WAN_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，"
    "丑陋的，残缺的，多余的手指"
)
"""The negative prompt of upstream's release scripts (Wan's Chinese negative prompt): the default of every request,
of `python -m mova_train.predict` and of validation sampling (config: `${mova.negative_prompt:}`)."""


class RequestError(ValueError):
    """A request (or requests file) is invalid; the message names the file, line and field."""


@dataclass
class SamplingSettings:
    """Defaults for every request field except ``prompt`` (release values: 193 frames, 352x640, 24 fps).

    Attributes:
        negative_prompt: Negative prompt for text CFG (default: `WAN_NEGATIVE_PROMPT`, what upstream's release
            scripts pass; "" is upstream pipeline ``__call__``'s own default).
        first_frame: Image path, or None for text-to-audio+video (see `preprocess.first_frame_tensor`).
        seed: Seed of the request's own noise generator.
        num_frames: Pixel frames, 4k + 1.
        height: Frame height, a multiple of 16.
        width: Frame width, a multiple of 16.
        fps: Frame rate (sets the audio length and the bridge time alignment).
        steps: Sampling steps.
        cfg_scale: Text guidance scale for video (and audio unless ``audio_cfg_scale`` is set).
        audio_cfg_scale: Text guidance scale for audio; None uses ``cfg_scale``.
        shift: Sigma shift of the sampling grid; None uses the scheduler config (5 in the release).
        guidance: ``"text"`` (release) or ``"dual"`` (adds a bridge-off pass: 3 passes per step).
        bridge_cfg_scale: Cross-modal guidance scale (``"dual"`` only).
        audio: Audio file (or a video file's audio track) to generate video for (a2v); kept in the output.
        video: Video file to generate audio for (v2a); its frames are kept in the output.
    """

    negative_prompt: str = WAN_NEGATIVE_PROMPT
    first_frame: str | None = None
    seed: int = 0
    num_frames: int = 193
    height: int = 352
    width: int = 640
    fps: float = 24.0
    steps: int = 50
    cfg_scale: float = 5.0
    audio_cfg_scale: float | None = None
    shift: float | None = None
    guidance: str = "text"
    bridge_cfg_scale: float = 0.0
    audio: str | None = None
    video: str | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> SamplingSettings:
        """Build from a mapping (e.g. a Hydra node); unknown keys raise a `RequestError`."""
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise RequestError(f"sampling settings: unknown key(s) {unknown}; allowed: {sorted(known)}")
        return cls(**d)


@dataclass
class Request:
    """One fully resolved generation request (all fields concrete; see `SamplingSettings` for their meaning).

    Not frozen: Lightning copies dataclasses field by field when it moves batches and predictions.

    Attributes:
        id: Stable identity ``<slug>-<sha8>-s<seed>`` (also the output file stem); derived from the content.
    """

    prompt: str
    negative_prompt: str
    first_frame: str | None
    seed: int
    num_frames: int
    height: int
    width: int
    fps: float
    steps: int
    cfg_scale: float
    audio_cfg_scale: float | None
    shift: float | None
    guidance: str
    bridge_cfg_scale: float
    audio: str | None = None
    video: str | None = None
    id: str = field(default="", compare=False)

    @property
    def mode(self) -> str:
        """``v2a`` (given video), ``a2v`` (given audio), ``i2av`` (first frame) or ``t2av`` (text only)."""
        if self.video is not None:
            return "v2a"
        if self.audio is not None:
            return "a2v"
        return "i2av" if self.first_frame is not None else "t2av"

    def content(self) -> dict[str, Any]:
        """Every field except ``id`` (what the hash covers); absent media are left out, so requests without
        media keep the ids they had before media existed.
        """
        d = dataclasses.asdict(self)
        d.pop("id")
        for name in _MEDIA:
            if d[name] is None:
                d.pop(name)
        return d

    def to_dict(self) -> dict[str, Any]:
        """JSON-serializable form, ``id`` included."""
        return dataclasses.asdict(self)

    def sha(self) -> str:
        """sha256 of the canonical JSON of `content` (hex)."""
        blob = json.dumps(self.content(), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()

    def batch_key(self) -> tuple[Any, ...]:
        """Settings that must agree for requests to share one sampling batch."""
        return (
            self.num_frames,
            self.height,
            self.width,
            self.fps,
            self.steps,
            self.cfg_scale,
            self.audio_cfg_scale,
            self.shift,
            self.guidance,
            self.bridge_cfg_scale,
            self.mode,
        )


def slugify(text: str, max_len: int = 40) -> str:
    """Lower-case ASCII slug of ``text`` (runs of other characters become ``-``), at most ``max_len`` chars."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:max_len].rstrip("-") or "sample"


def request_name(req: Request) -> str:
    """Deterministic file stem ``<slug(prompt)[:40]>-<sha8(request)>-s<seed>``."""
    return f"{slugify(req.prompt)}-{req.sha()[:8]}-s{req.seed}"


def _where(source: str, line: int | None) -> str:
    return f"{source}:{line}" if line is not None else source


_MEDIA = ("audio", "video")
_FILES = ("first_frame", *_MEDIA)

LIMITS = {
    "fps": (1.0, 240.0),
    "num_frames": (1, 4097),
    "height": (16, 4096),
    "width": (16, 4096),
    "steps": (1, 1000),
    "seconds": 600.0,
}
"""Ranges a request must fit (checked before anything is allocated): a typo such as ``fps: 1e-9`` would
otherwise ask for terabytes of audio latents."""


def _check(req: Request, where: str, spatial_multiple: int, check_files: bool) -> None:
    def bad(name: str, why: str) -> RequestError:
        return RequestError(f"{where}: field {name!r}={getattr(req, name)!r} {why}")

    if not req.prompt.strip():
        raise bad("prompt", "must be a non-empty string")
    for name in ("fps", "num_frames", "height", "width", "steps"):
        low, high = LIMITS[name]
        if not low <= getattr(req, name) <= high:
            raise bad(name, f"is out of range; use a value in [{low:g}, {high:g}]")
    if (req.num_frames - 1) % 4:
        raise bad("num_frames", "must be 4k + 1 (e.g. 17, 97, 193)")
    for name in ("height", "width"):
        if getattr(req, name) % spatial_multiple:
            raise bad(name, f"must be a positive multiple of {spatial_multiple} (e.g. 352x640, 720x1280)")
    seconds = req.num_frames / req.fps
    if seconds > LIMITS["seconds"]:
        raise bad(
            "num_frames",
            f"at fps={req.fps:g} lasts {seconds:.0f} s, more than {LIMITS['seconds']:g} s; lower num_frames or "
            "raise fps",
        )
    if req.seed < 0:
        raise bad("seed", "must be >= 0")
    if req.shift is not None and req.shift <= 0:
        raise bad("shift", "must be > 0 (or null for the scheduler's value)")
    if req.guidance not in ("text", "dual"):
        raise bad("guidance", "must be 'text' or 'dual'")
    if req.audio is not None and req.video is not None:
        raise bad(
            "video", "cannot go with 'audio': give audio (generate video for it) or video (generate audio)"
        )
    if req.video is not None and req.first_frame is not None:
        raise bad(
            "first_frame", "cannot go with 'video' (the given video's first frame conditions the sample)"
        )
    if check_files:
        for name in _FILES:
            if getattr(req, name) is not None and not Path(getattr(req, name)).is_file():
                raise bad(name, "is not a file (relative paths are resolved against the requests file)")
        if req.audio is not None or req.video is not None:
            from mova_train.sampling.media import check_media_length

            name = "audio" if req.audio is not None else "video"
            try:
                check_media_length(getattr(req, name), name, seconds, req.fps)
            except ValueError as err:
                raise bad(name, str(err)) from err


_TYPES: dict[str, tuple[type, ...]] = {
    "prompt": (str,),
    "negative_prompt": (str,),
    "first_frame": (str, type(None)),
    "seed": (int,),
    "num_frames": (int,),
    "height": (int,),
    "width": (int,),
    "fps": (int, float),
    "steps": (int,),
    "cfg_scale": (int, float),
    "audio_cfg_scale": (int, float, type(None)),
    "shift": (int, float, type(None)),
    "guidance": (str,),
    "bridge_cfg_scale": (int, float),
    "audio": (str, type(None)),
    "video": (str, type(None)),
}


def make_request(
    entry: dict[str, Any],
    defaults: SamplingSettings | None = None,
    *,
    source: str = "<request>",
    line: int | None = None,
    base_dir: str | Path | None = None,
    spatial_multiple: int = 16,
    check_files: bool = True,
) -> Request:
    """Resolve one request mapping against the defaults and validate it.

    Args:
        entry: Mapping with ``prompt`` and any `SamplingSettings` field.
        defaults: Values for missing fields (default: `SamplingSettings()`).
        source: File name used in error messages.
        line: Line number used in error messages.
        base_dir: Folder that relative ``first_frame``/``audio``/``video`` paths are resolved against.
        spatial_multiple: Height and width must be multiples of this (16 = VAE 8 x DiT patch 2).
        check_files: Require the files to exist (and media to cover the request's length).

    Returns:
        The resolved `Request` with its ``id``.

    Raises:
        RequestError: naming ``source:line``, the field and the fix.
    """
    where = _where(source, line)
    if not isinstance(entry, dict):
        raise RequestError(
            f"{where}: a request must be a mapping with at least 'prompt', got {type(entry).__name__}"
        )
    unknown = sorted(set(entry) - set(_TYPES) - {"id"})
    if unknown:
        raise RequestError(f"{where}: unknown field(s) {unknown}; allowed: {sorted(_TYPES)}")
    if "prompt" not in entry:
        raise RequestError(f"{where}: field 'prompt' is missing (every request needs a prompt)")
    values = dataclasses.asdict(defaults or SamplingSettings())
    values.update({k: v for k, v in entry.items() if k != "id"})
    for name, types in _TYPES.items():
        value = values[name]
        if isinstance(value, bool) or not isinstance(value, types):
            want = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise RequestError(f"{where}: field {name!r}={value!r} must be {want}")
    for name in ("fps", "cfg_scale", "bridge_cfg_scale", "audio_cfg_scale", "shift"):
        if values[name] is not None:
            values[name] = float(values[name])
    for name in _FILES:
        if values[name] is not None:
            path = Path(values[name]).expanduser()
            values[name] = str(path if path.is_absolute() or base_dir is None else Path(base_dir) / path)
    req = Request(**values)
    _check(req, where, spatial_multiple, check_files)
    return dataclasses.replace(req, id=request_name(req))


def _yaml_entries(path: Path, text: str) -> list[tuple[int | None, Any]]:
    import yaml

    try:
        data = yaml.safe_load(text)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as err:
        raise RequestError(f"{path}: invalid YAML: {err}") from err
    if isinstance(data, dict) and "requests" in data:
        data = data["requests"]
        node = next(v for k, v in node.value if k.value == "requests")
    if not isinstance(data, list):
        raise RequestError(f"{path}: expected a list of requests (or a mapping with a 'requests' list)")
    lines = [item.start_mark.line + 1 for item in node.value]
    return list(zip(lines, data, strict=True))


def _jsonl_entries(path: Path, text: str) -> list[tuple[int | None, Any]]:
    out: list[tuple[int | None, Any]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            out.append((number, json.loads(stripped)))
        except json.JSONDecodeError as err:
            raise RequestError(f"{path}:{number}: invalid JSON ({err.msg} at column {err.colno})") from err
    return out


def load_requests(
    path: str | Path,
    defaults: SamplingSettings | None = None,
    *,
    spatial_multiple: int = 16,
    check_files: bool = True,
) -> list[Request]:
    """Parse a JSONL (``.jsonl``/``.json``) or YAML (``.yaml``/``.yml``) requests file.

    Args:
        path: The requests file.
        defaults: Values for fields an entry leaves out.
        spatial_multiple: Height/width multiple (16).
        check_files: Require every ``first_frame``/``audio``/``video`` to exist.

    Returns:
        The requests, in file order.

    Raises:
        RequestError: on a missing/empty file, bad syntax, or an invalid entry (file, line and field named).
    """
    path = Path(path)
    if not path.is_file():
        raise RequestError(
            f"requests file {path} does not exist; pass requests=/path/to/requests.jsonl or prompt=..."
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise RequestError(
            f"{path}: not UTF-8 text (byte {err.start} is {err.object[err.start : err.start + 1]!r}); save the "
            "requests file as UTF-8"
        ) from err
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        entries = _yaml_entries(path, text)
    elif suffix in (".jsonl", ".json"):
        entries = _jsonl_entries(path, text)
    else:
        raise RequestError(f"{path}: unknown requests format {suffix!r}; use .jsonl or .yaml")
    if not entries:
        raise RequestError(f"{path}: no requests found")
    return [
        make_request(
            entry,
            defaults,
            source=str(path),
            line=line,
            base_dir=path.parent,
            spatial_multiple=spatial_multiple,
            check_files=check_files,
        )
        for line, entry in entries
    ]

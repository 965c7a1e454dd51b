"""Probe a clip with torchcodec and decide, once, whether it is usable.

`probe_clip` opens a clip (path or bytes), reads its stream metadata, decodes a few frames to check that the file is
whole and that its frame rate is constant, and returns a `ClipRecord`. A clip that cannot be used raises `ProbeError`
with a reason from `mova_train.data.schema.SKIP_REASONS` and a human-readable detail. What counts as unusable (e.g. a
missing audio stream) is set by a `ProbePolicy`. A clip whose sound is a separate file (`audio_source`) has that
file probed too; its start lines up with the first video frame unless an `audio_offset` is given.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from mova_train.data import schema
from mova_train.data.schema import ClipRecord

logger = logging.getLogger(__name__)

# Frames decoded to check timestamps (spread evenly over the clip, first and last included).
_PTS_CHECK_FRAMES = 7
# A frame whose timestamp is off by more than this fraction of a frame period marks the clip as variable-rate.
_VFR_TOLERANCE = 0.5
# Header and content frame rates differing by more than this relative amount also mark it.
_FPS_RELATIVE_TOLERANCE = 0.02


class ProbeError(Exception):
    """A clip cannot be used.

    Attributes:
        reason: One of `schema.SKIP_REASONS` (e.g. "unreadable").
        detail: What was wrong and how to fix it.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ProbePolicy:
    """Which problems make `probe_clip` reject a clip (the others are recorded and kept).

    Attributes:
        require_audio: Reject clips without an audio stream (default: keep them with `has_audio=False`).
        min_frames: Reject clips with fewer video frames (e.g. the training `num_frames`).
        min_duration: Reject clips shorter than this many seconds.
        skip_variable_frame_rate: Reject variable-frame-rate clips (default: keep, flagged).
        skip_empty_caption: Reject clips whose caption is empty (default: keep, flagged).
        detect_cuts: Find scene cuts (`mova_train.data.scenes.detect_cuts`) and store them in the record.
        av_audit: Estimate the A/V offset (`mova_train.data.av_sync`) and store it in the record.
        max_av_offset_ms: Flag clips whose confidently measured offset is larger (turns `av_audit` on).
        skip_av_offset: Reject such clips instead of flagging them.
        min_av_confidence: Estimates below this confidence never flag or reject a clip.
    """

    require_audio: bool = False
    min_frames: int = 1
    min_duration: float = 0.0
    skip_variable_frame_rate: bool = False
    skip_empty_caption: bool = False
    detect_cuts: bool = False
    av_audit: bool = False
    max_av_offset_ms: float | None = None
    skip_av_offset: bool = False
    min_av_confidence: float = 0.3


def read_caption(path: str | Path) -> str:
    """Read a UTF-8 caption file (a BOM is allowed), stripped of surrounding whitespace.

    Raises:
        ProbeError: `bad_caption_encoding` when the file is not valid UTF-8.
    """
    raw = Path(path).read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ProbeError(
            schema.SKIP_BAD_CAPTION_ENCODING,
            f"caption file {path} is not UTF-8 (byte {raw[err.start]:#04x} at offset {err.start}); "
            "re-save it as UTF-8, e.g. `iconv -f latin1 -t utf-8`",
        ) from err
    return text.strip()


def _exact_fps(average: float) -> Fraction:
    """Turn a measured average rate into a fraction; NTSC rates come out as n*1000/1001."""
    return Fraction(average).limit_denominator(1001)


def _open_video(data: bytes, where: str):
    """Open the video stream; map torchcodec errors to skip reasons."""
    from torchcodec.decoders import AudioDecoder, VideoDecoder

    try:
        return VideoDecoder(data, seek_mode="exact", num_ffmpeg_threads=1)
    except ValueError as err:
        # torchcodec raises ValueError when the container opens but holds no video stream
        try:
            AudioDecoder(data)
        except Exception:  # noqa: BLE001 - any failure here means the file is not a usable container
            raise ProbeError(schema.SKIP_UNREADABLE, f"{where}: {err}".strip()) from err
        raise ProbeError(
            schema.SKIP_NO_VIDEO_STREAM, f"{where} has an audio stream but no video stream (audio-only file)"
        ) from err
    except RuntimeError as err:
        # drop torchcodec's "SingleStreamDecoder, /path/file.cpp:80, " prefix
        first_line = re.sub(r"^.*\.cpp:\d+,\s*", "", str(err).strip()) or type(err).__name__
        raise ProbeError(
            schema.SKIP_UNREADABLE,
            f"{where} cannot be opened as a media file ({first_line}); re-encode or remove it",
        ) from err


def _read_input(path: Path, where: str, what: str) -> bytes:
    """The bytes of an input file; missing and empty files raise `ProbeError` naming it."""
    if not path.is_file():
        raise ProbeError(
            schema.SKIP_MISSING_FILE, f"{what} {path} does not exist; fix the path or remove the entry"
        )
    data = path.read_bytes()
    if not data:
        raise ProbeError(
            schema.SKIP_EMPTY_FILE, f"{where}: {what} {path} is an empty (zero-byte) file; re-export it"
        )
    return data


def _probe_audio(data: bytes, where: str) -> tuple[int, int, float | None] | None:
    """Return (sample_rate, channels, duration) of the audio stream, or None without one."""
    from torchcodec.decoders import AudioDecoder

    try:
        decoder = AudioDecoder(data)
    except ValueError:
        return None
    except RuntimeError as err:
        raise ProbeError(
            schema.SKIP_UNREADABLE, f"{where}: the audio stream cannot be opened ({err})"
        ) from err
    meta = decoder.metadata
    duration = meta.duration_seconds
    if duration is None:
        # no duration in the header: measure it by decoding (audio is cheap to decode)
        samples = decoder.get_all_samples()
        duration = samples.data.shape[-1] / samples.sample_rate
    return int(meta.sample_rate), int(meta.num_channels), float(duration)


def _check_video(decoder, where: str) -> tuple[int, Fraction, float, bool]:
    """Check completeness and frame timing; return (num_frames, fps, duration, variable_frame_rate)."""
    meta = decoder.metadata
    num_frames = meta.num_frames_from_content or meta.num_frames or 0
    if num_frames <= 0:
        raise ProbeError(schema.SKIP_UNREADABLE, f"{where}: the video stream has no decodable frames")
    header_frames = meta.num_frames_from_header
    if header_frames is not None and header_frames > num_frames:
        raise ProbeError(
            schema.SKIP_TRUNCATED,
            f"{where}: the header promises {header_frames} frames but only {num_frames} are present "
            "(truncated download or copy?); fetch the file again",
        )
    duration = meta.duration_seconds
    average = meta.average_fps
    if not average or not duration:
        raise ProbeError(
            schema.SKIP_UNREADABLE, f"{where}: the video stream has no usable timing information"
        )
    fps = _exact_fps(float(average))
    count = min(_PTS_CHECK_FRAMES, num_frames)
    indices = sorted({round(i * (num_frames - 1) / max(1, count - 1)) for i in range(count)})
    try:
        batch = decoder.get_frames_at(indices)
    except Exception as err:  # noqa: BLE001 - any decode failure makes the clip unusable
        raise ProbeError(schema.SKIP_UNREADABLE, f"{where}: frames cannot be decoded ({err})") from err
    begin = float(batch.pts_seconds[0])
    period = 1.0 / float(fps)
    worst = max(abs(float(p) - begin - i * period) for p, i in zip(batch.pts_seconds, indices, strict=True))
    header_fps = meta.average_fps_from_header
    fps_disagree = bool(header_fps) and abs(header_fps - float(fps)) > _FPS_RELATIVE_TOLERANCE * float(fps)
    vfr = worst > _VFR_TOLERANCE * period or fps_disagree
    return num_frames, fps, float(duration), vfr


def probe_clip(
    source: str | Path | bytes,
    *,
    caption: str = "",
    source_path: str | None = None,
    policy: ProbePolicy | None = None,
    audio_source: str | Path | None = None,
    audio_offset: float = 0.0,
) -> ClipRecord:
    """Probe one clip and build its shard record.

    Args:
        source: A file path or the clip bytes.
        caption: The clip's caption.
        source_path: Name recorded in the record (default: the path, or "<bytes>").
        policy: What to reject (default `ProbePolicy()`).
        audio_source: A separate audio file (wav, flac, m4a, ...) that replaces the clip's own sound.
        audio_offset: Seconds after the first video frame at which the audio starts (`ClipRecord.audio_offset`).

    Returns:
        A validated `ClipRecord`.

    Raises:
        ProbeError: The clip is unusable; `reason` says why (`missing_file`, `empty_file`, `unreadable`,
            `truncated`, `no_video_stream`, `no_audio_stream`, `too_short`, `variable_frame_rate`,
            `empty_caption`).
    """
    policy = policy or ProbePolicy()
    if isinstance(source, bytes):
        data, where = source, source_path or "<bytes>"
    else:
        path = Path(source)
        where = source_path or str(path)
        data = _read_input(path, where, "clip")
    if not data:
        raise ProbeError(
            schema.SKIP_EMPTY_FILE, f"{where} is an empty (zero-byte) file; re-export or remove it"
        )
    if policy.skip_empty_caption and not caption.strip():
        raise ProbeError(
            schema.SKIP_EMPTY_CAPTION, f"{where} has an empty caption; write one or drop the policy"
        )

    decoder = _open_video(data, where)
    num_frames, fps, duration, vfr = _check_video(decoder, where)
    audio_data = None if audio_source is None else _read_input(Path(audio_source), where, "audio_path")
    if audio_data is None:
        audio = _probe_audio(data, where)
    else:
        audio = _probe_audio(audio_data, f"{where}: audio_path {audio_source}")
        if audio is None:
            raise ProbeError(
                schema.SKIP_UNREADABLE,
                f"{where}: audio_path {audio_source} holds no audio stream; point it at a wav/flac/m4a file",
            )
    if audio is None and policy.require_audio:
        raise ProbeError(
            schema.SKIP_NO_AUDIO_STREAM, f"{where} has no audio stream (audio is required by policy)"
        )
    if num_frames < policy.min_frames or duration < policy.min_duration:
        raise ProbeError(
            schema.SKIP_TOO_SHORT,
            f"{where} has {num_frames} frames ({duration:.3f} s); at least {policy.min_frames} frames and "
            f"{policy.min_duration} s are required",
        )
    if vfr and policy.skip_variable_frame_rate:
        raise ProbeError(
            schema.SKIP_VARIABLE_FRAME_RATE, f"{where} has a variable frame rate; re-encode at a CFR"
        )
    meta = decoder.metadata
    record = ClipRecord(
        caption=caption,
        source_path=where,
        fps=float(fps),
        fps_num=fps.numerator,
        fps_den=fps.denominator,
        num_frames=int(num_frames),
        duration=duration,
        width=int(meta.width),  # torchcodec reports the displayed (rotated) size
        height=int(meta.height),
        has_audio=audio is not None,
        sample_rate=audio[0] if audio else None,
        num_channels=audio[1] if audio else None,
        audio_duration=audio[2] if audio else None,
        sha256=hashlib.sha256(data).hexdigest(),
        variable_frame_rate=vfr,
        separate_audio=audio_data is not None,
        audio_sha256=None if audio_data is None else hashlib.sha256(audio_data).hexdigest(),
        audio_offset=float(audio_offset),
    )
    _analyze(record, data, audio_data, where, policy)
    return record.validate()


def _analyze(
    record: ClipRecord, data: bytes, audio_data: bytes | None, where: str, policy: ProbePolicy
) -> None:
    """Scene cuts and the A/V offset, as the policy asks; rejects clips whose offset is too large.

    Both read the same low-resolution frames, decoded once.
    """
    from mova_train.data.scenes import detect_cuts, read_low_res_frames

    audit = (policy.av_audit or policy.max_av_offset_ms is not None) and record.has_audio
    decoded = read_low_res_frames(data) if policy.detect_cuts and audit else None
    if policy.detect_cuts:
        record.cuts = detect_cuts(data, decoded=decoded)
    if not audit:
        return
    from mova_train.data.av_sync import estimate_clip_offset

    estimate = estimate_clip_offset(data, audio_data, audio_offset=record.audio_offset, decoded=decoded)
    record.av_offset_ms, record.av_confidence = estimate.offset_ms, estimate.confidence
    if policy.skip_av_offset and av_offset_too_large(record, policy):
        raise ProbeError(
            schema.SKIP_AV_OFFSET,
            f"{where}: the sound is {estimate.offset_ms:+.0f} ms off the picture (confidence "
            f"{estimate.confidence:.2f}, limit {policy.max_av_offset_ms} ms); fix it with audio_offset "
            f"{-estimate.offset_ms / 1000:+.3f} or drop --skip-av-offset",
        )


def av_offset_too_large(record: ClipRecord, policy: ProbePolicy) -> bool:
    """Whether a confidently measured A/V offset exceeds `policy.max_av_offset_ms`."""
    return (
        policy.max_av_offset_ms is not None
        and record.av_offset_ms is not None
        and (record.av_confidence or 0.0) >= policy.min_av_confidence
        and abs(record.av_offset_ms) > policy.max_av_offset_ms
    )


def record_flags(record: ClipRecord, policy: ProbePolicy | None = None) -> list[str]:
    """Return the `schema.FLAG_*` names that apply to a kept clip (worth knowing, not reasons to skip); with a
    policy, also `av_offset` for a confidently measured offset above its limit.
    """
    flags = []
    if not record.has_audio:
        flags.append(schema.FLAG_NO_AUDIO)
    elif record.audio_duration is not None and record.audio_duration < record.duration - 1.0 / record.fps:
        flags.append(schema.FLAG_AUDIO_SHORTER)
    if not record.caption.strip():
        flags.append(schema.FLAG_EMPTY_CAPTION)
    if record.variable_frame_rate:
        flags.append(schema.FLAG_VARIABLE_FRAME_RATE)
    if policy is not None and av_offset_too_large(record, policy):
        flags.append(schema.FLAG_AV_OFFSET)
    return flags

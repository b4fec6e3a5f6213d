"""The preprocessing benchmark keeps working: one short round over both photo sets. No timing is asserted;
timings vary by machine."""

from __future__ import annotations

import pytest

from benchmarks import preprocess_bench

pytestmark = pytest.mark.timeout(120)


def test_every_step_is_timed_on_both_photo_sets() -> None:
    results = preprocess_bench.measure(rounds=1, repeat=1)
    assert list(results) == ["benchmark photos (451x300 to 640x427)", "camera size (4032x3024)"]
    for steps in results.values():
        assert "preprocess, as the consumer runs it (draft on)" in steps
        assert "  decode (Pillow, draft)" in steps
        assert all(ms > 0 for ms in steps.values())
    table = preprocess_bench.render(results)
    assert table.count("\n") == 1 + len(results["camera size (4032x3024)"])


def test_camera_photos_are_jpegs_of_the_camera_size() -> None:
    from io import BytesIO

    from PIL import Image

    small = [data for _, data in preprocess_bench.bench_photos()[:1]]
    (large,) = preprocess_bench.camera_photos(small, size=(800, 600))
    with Image.open(BytesIO(large)) as image:
        assert (image.format, image.size) == ("JPEG", (800, 600))

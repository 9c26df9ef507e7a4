"""`lpasrn data inspect`: counts per split and layout, histogram, rejected records, contact sheet."""
from __future__ import annotations

import json

from PIL import Image

from fixtures_formats import truncate_file, write_folder_source, write_ufpr_source
from lpasrn.cli import main
from lpasrn.fonts import mono_font


def imported_folder_dataset(tmp_path, capsys):
    """folder source: 3 train (2 brazilian, 1 mercosur), 1 val, 1 test with a 5-char text, 1 bad."""
    src, out = tmp_path / "src", tmp_path / "data"
    write_folder_source(src, [("a.png", "ABC1234", "train"), ("b.png", "BCD2345", "training"),
                              ("c.png", "CDE3F45", "train"), ("d.png", "DEF4567", "val"),
                              ("e.png", "XY123", "test"), ("f.png", "FGH6789", "test")])
    truncate_file(src / "lr" / "f.png")
    assert main(["data", "import", "folder", str(src), "--out", str(out)]) == 0
    capsys.readouterr()
    return src, out


def test_inspect_prints_counts_histogram_and_rejected(tmp_path, capsys):
    src, out = imported_folder_dataset(tmp_path, capsys)
    assert main(["data", "inspect", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    table = {line.split()[0]: line.split()[1:] for line in lines[1:6]}
    assert lines[1].split() == ["split", "samples", "tracks", "brazilian", "mercosur", "other"]
    assert table["train"] == ["3", "0", "2", "1", "0"]
    assert table["val"] == ["1", "0", "1", "0", "0"]
    assert table["test"] == ["1", "0", "0", "0", "1"]
    assert table["total"] == ["5", "0", "3", "1", "1"]
    assert "text lengths:" in lines and any(line.split()[:2] == ["5:", "1"] for line in lines)
    assert any(line.split()[:2] == ["7:", "4"] for line in lines)
    assert "sources: folder 5" in lines
    assert "rejected at import: 1" in lines
    assert any(line.startswith(f"  {src / 'hr' / 'f.png'}: unreadable or truncated image f.png") for line in lines)


def test_inspect_json_and_tracks(tmp_path, capsys):
    src, out = tmp_path / "src", tmp_path / "data"
    write_ufpr_source(src)
    assert main(["data", "import", "ufpr", str(src), "--out", str(out), "--seed", "1"]) == 0
    capsys.readouterr()
    assert main(["data", "inspect", str(out), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert sum(s["tracks"] for s in stats["splits"].values()) == 2
    assert stats["total"]["count"] == 4 and stats["total"]["sources"] == {"ufpr": 4}
    assert stats["settings"]["format"] == "ufpr" and stats["rejected"] == []


def test_inspect_writes_contact_sheet(tmp_path, capsys):
    _, out = imported_folder_dataset(tmp_path, capsys)
    assert main(["data", "inspect", str(out), "--sheet", str(tmp_path / "two.png"), "--per-split", "2"]) == 0
    with Image.open(tmp_path / "two.png") as image:
        assert image.size[1] == 8 + 3 * 28 + 4 * 72  # 2 of the 3 train samples
    sheet = tmp_path / "sheets" / "sheet.png"
    assert main(["data", "inspect", str(out), "--sheet", str(sheet)]) == 0  # up to 6 per split: all 5
    assert f"contact sheet: {sheet}" in capsys.readouterr().out
    with Image.open(sheet) as image:
        width, height = image.size
        pixels = image.convert("RGB")
        # 3 split headers (28) and 3 + 1 + 1 rows of 64 + 8, plus the top margin
        assert (width, height) == (8 * 4 + 192 * 2 + 220, 8 + 3 * 28 + 5 * 72)
        assert pixels.getpixel((8 + 192 + 8 + 96, 8 + 28 + 32)) != (255, 255, 255)  # an HR cell
    assert mono_font(22).getbbox("ABC1234")[2] > 0


def test_inspect_missing_dataset_is_one_line(tmp_path, capsys):
    assert main(["data", "inspect", str(tmp_path / "none")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1

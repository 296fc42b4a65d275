"""UniGenBench++: loader on the four shipped CSVs, row-509 repair, judge prompt bytes, parser,
aggregation on a hand-made results file."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest

from slas.errors import SlasError
from slas.eval.judge import read_results
from slas.eval.unigenbench import (
    CATEGORIES,
    PRIMARY_DIMENSIONS,
    SUB_DIMENSIONS,
    TO_ENGLISH,
    Judgement,
    JudgePrompts,
    UniGenBenchRecord,
    aggregate,
    build_judge_prompt,
    format_table,
    load_judge_prompts,
    load_prompts,
    parse_judgement,
    parse_sub_dims,
    primary_of,
    summary_to_dict,
)

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "unigenbench"

# A stand-in for judge_prompts.json so the pure parts are tested without the shared data.
MINI = JudgePrompts(
    explanation={"en": {en: f"def of {en}" for en, _ in SUB_DIMENSIONS},
                 "zh": {zh: f"{zh}的定义" for _, zh in SUB_DIMENSIONS}},
    template={"en": "P={prompt}|T={testpoint}|E={explanation}|D={test_explanation}",
              "zh": "提示{prompt}|{testpoint}|{explanation}|{test_explanation}"},
    config={"en": {"testpoint_key": "Testpoints", "desc_key": "Testpoint Description",
                   "checkpoint_header": "Checkpoints Defination",
                   "checkpoint_desc_header": "Checkpoints Description"},
            "zh": {"testpoint_key": "考点", "desc_key": "考点对应描述",
                   "checkpoint_header": "考点说明", "checkpoint_desc_header": "考点描述说明"}},
    sha256="",
)


@pytest.fixture(scope="module")
def official() -> JudgePrompts:
    if not (DATA / "judge_prompts.json").is_file():
        pytest.skip("../shared/data not found; tests that read ../shared/data are skipped")
    return load_judge_prompts(DATA / "judge_prompts.json")


@pytest.mark.parametrize("category, n_testpoints, repaired", [
    ("en", 1813, ()), ("en_long", 3920, (511,)), ("zh", 1813, ()), ("zh_long", 3920, ()),
])
def test_official_files_load_with_documented_counts(official, category, n_testpoints, repaired):
    p = load_prompts(DATA / CATEGORIES[category], official)
    assert [r.index for r in p.records] == list(range(600))
    assert sum(len(r.testpoints) for r in p.records) == n_testpoints
    # index 509 sits on CSV line 511 (line 1 is the header, index 0 is line 2)
    assert p.repaired_lines == repaired
    assert p.lang == category[:2]
    assert all(len(r.testpoints) == len(r.descriptions) for r in p.records)


def test_english_and_chinese_rows_name_the_same_testpoints(official):
    """The explicit en<->zh pairing agrees with every row of both file pairs."""
    for short in ("en", "en_long"):
        en = load_prompts(DATA / CATEGORIES[short], official).records
        zh = load_prompts(DATA / CATEGORIES["zh" + short[2:]], official).records
        for a, b in zip(en, zh, strict=True):
            assert a.testpoints == tuple(TO_ENGLISH[t] for t in b.testpoints), a.index


@pytest.mark.parametrize("category, counts", [
    ("en", [250, 158, 234, 263, 197, 194, 187, 134, 109, 87]),
    ("en_long", [301, 173, 1311, 622, 464, 343, 197, 315, 102, 92]),
])
def test_testpoints_per_primary_match_the_reference_table(official, category, counts):
    records = load_prompts(DATA / CATEGORIES[category], official).records
    per_primary = Counter(primary_of(t) for r in records for t in r.testpoints)
    assert [per_primary[p] for p in PRIMARY_DIMENSIONS] == counts


def test_vocabulary_is_the_official_27(official):
    for lang, col in (("en", 0), ("zh", 1)):
        assert set(official.explanation[lang]) == {pair[col] for pair in SUB_DIMENSIONS}
    assert len({en for en, _ in SUB_DIMENSIONS}) == len({zh for _, zh in SUB_DIMENSIONS}) == 27
    per_primary = Counter(primary_of(en) for en, _ in SUB_DIMENSIONS)
    # 4 hyphen-less primaries + Attribute 6 + Action 6 + Relation 4 + Compound 2 + Grammar 3
    # + Layout 2 = 27
    assert per_primary == {"Style": 1, "World Knowledge": 1, "Logical Reasoning": 1, "Text": 1,
                           "Attribute": 6, "Action": 6, "Relation": 4, "Compound": 2,
                           "Grammar": 3, "Layout": 2}
    assert primary_of("实体布局-三维空间") == primary_of("Entity Layout - Two-Dimensional Space")
    assert primary_of("文本生成") == "Text"


def test_row_509_fails_raw_and_passes_repaired(official, tmp_path):
    lines = (DATA / CATEGORIES["en_long"]).read_text(encoding="utf-8").splitlines()
    assert lines[510].startswith("509,")
    sub = tmp_path / "row509.csv"
    sub.write_text(lines[0] + "\n" + lines[510] + "\n", encoding="utf-8")
    with pytest.raises(SlasError, match=rf"{sub} line 2: sub_dims_en is not valid JSON"):
        load_prompts(sub, official, repair=False)
    rec = load_prompts(sub, official).records[0]
    assert rec.repaired and rec.index == 509
    assert rec.testpoints == ("Action - Full-body (Character/Anthropomorphic)",
                              "Grammar - Negation", "Attribute - Color", "Attribute - Material",
                              "Attribute - Expression")
    assert len(rec.descriptions) == 5 and rec.descriptions[2] == "deep sea blue"


def test_repair_only_inserts_the_missing_comma():
    cell = '{"Testpoints": ["Style"  "World Knowledge"], "Testpoint Description": ["a", "b"]}'
    tps, descs, themes, fixed = parse_sub_dims(cell, MINI, "en", "x line 2")
    assert (tps, descs, themes, fixed) == (("Style", "World Knowledge"), ("a", "b"), {}, True)
    # a repaired cell must still satisfy the equal-length rule
    bad = '{"Testpoints": ["Style" "World Knowledge"], "Testpoint Description": ["a"]}'
    with pytest.raises(SlasError, match="2 testpoints but 1 descriptions"):
        parse_sub_dims(bad, MINI, "en", "x line 2")


@pytest.mark.parametrize("body, message", [
    ("0,p\n", "line 2: expected 3 fields"),
    ('zero,p,"{}"\n', "line 2: index must be an integer"),
    ('0,p,"{""Testpoints"": [""Style""], ""Testpoint Description"": [""a""]}"\n'
     '0,q,"{""Testpoints"": [""Style""], ""Testpoint Description"": [""a""]}"\n',
     "line 3: index 0 is negative or repeated"),
    ('0,p,"{""Testpoints"": [""Styl""], ""Testpoint Description"": [""a""]}"\n',
     r"line 2: unknown testpoint\(s\) \['Styl'\]"),
    ('0,p,"{""Testpoints"": [], ""Testpoint Description"": []}"\n', "line 2: 'Testpoints' must"),
    ('0,p,"{""Testpoints"": [""Style""]}"\n', "line 2: 'Testpoint Description' must"),
    ('0, ,"{""Testpoints"": [""Style""], ""Testpoint Description"": [""a""]}"\n',
     "line 2: empty prompt_en"),
])
def test_malformed_rows_name_file_and_line(tmp_path, body, message):
    path = tmp_path / "bad.csv"
    path.write_text("index,prompt_en,sub_dims_en\n" + body, encoding="utf-8")
    with pytest.raises(SlasError, match=f"{path} {message}"):
        load_prompts(path, MINI)


def test_bad_header_is_rejected(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("index,prompt,sub_dims\n", encoding="utf-8")
    with pytest.raises(SlasError, match="line 1: header must be"):
        load_prompts(path, MINI)


def test_judge_prompt_is_byte_identical_to_upstream_assembly(official):
    rec = load_prompts(DATA / CATEGORIES["en"], official).records[0]
    # Assembled independently: literal texts of upstream's dictionary, headers and list repr.
    explanation = (
        "Checkpoints Defination:「"
        "\nStyle: Art, painting, photography, design styles, and corresponding artist names"
        "\nWorld Knowledge: Covers knowledge of celebrities, architecture, basic domain "
        "knowledge, and internet slang. Celebrities with modern copyright risk should be avoided"
        "\nAttribute - Quantity: Focuses on the challenge of depicting three or more items "
        "accurately\n」")
    description = ("Checkpoints Description:「\nStyle: classical ink painting"
                   "\nWorld Knowledge: Egyptian pyramids\nAttribute - Quantity: two pandas\n」")
    prompt = ("In the style of classical ink painting, against the background of Egyptian "
              "pyramids, two pandas wearing spacesuits are leisurely tasting bamboo.")
    expected = (official.template["en"].replace("{prompt}", prompt)
                .replace("{testpoint}", "['Style', 'World Knowledge', 'Attribute - Quantity']")
                .replace("{explanation}", explanation)
                .replace("{test_explanation}", description))
    text = build_judge_prompt(rec, official)
    assert text.encode("utf-8") == expected.encode("utf-8")
    assert ("1. The prompt for the generated image is: 「" + prompt + "」. You are to analyze "
            "the image content in detail from the angles specified in ['Style', 'World "
            "Knowledge', 'Attribute - Quantity']. Detailed definitions of these checkpoints are "
            "provided here: Checkpoints Defination:「\nStyle: Art,") in text
    assert text.startswith("You are a precise and objective English-language image")
    assert text.endswith("</score>\n            </description>\n            ")


def test_chinese_judge_prompt_uses_the_ascii_colon_of_upstream_head(official):
    rec = load_prompts(DATA / CATEGORIES["zh"], official).records[0]
    text = build_judge_prompt(rec, official)
    assert ("考点的详细说明如下：考点说明:「\n风格: 艺术、绘画、摄影、设计风格，及对应艺术家名称"
            "\n世界知识: 名人、建筑、基础的领域知识、网络流行语。"
            "其中名人不要使用当代有版权风险的名人\n"
            "属性-数量: 重点考察三个或三个以上的数字难点\n」") in text
    assert ("考点描述说明:「\n风格: 古典水墨画风格\n世界知识: 埃及金字塔"
            "\n属性-数量: 两只熊猫\n」") in text
    assert "<checkpoint>['风格', '世界知识', '属性-数量']</checkpoint>" in text


def test_prompt_text_with_braces_is_inserted_verbatim():
    rec = UniGenBenchRecord(3, "a {sign} and }{", ("Style",), ("ink",), "en", 2, False, {})
    assert build_judge_prompt(rec, MINI) == (
        "P=a {sign} and }{|T=['Style']|E=Checkpoints Defination:「\nStyle: def of Style\n」"
        "|D=Checkpoints Description:「\nStyle: ink\n」")


def test_parser_accepts_a_good_answer():
    text = ("<description><analysis>\n['red is there', \"no cat\"]\n</analysis>\n"
            "<score> [1, 0] </score></description>")
    assert parse_judgement(text, 2) == (True, ("red is there", "no cat"), (1, 0), "")


@pytest.mark.parametrize("text, error", [
    (None, "empty answer"),
    ("<analysis>['a', 'b']</analysis>", "missing <analysis> or <score> tag"),
    ("<analysis>['a', 'b'</analysis><score>[1, 0]</score>", "<analysis> is not a Python literal"),
    ("<analysis>['a', 'b']</analysis><score>[1, yes]</score>", "<score> is not a Python literal"),
    ("<analysis>['a', 'b']</analysis><score>[1, 0, 1]</score>", "list of 2 entries, got 3"),
    ("<analysis>['a']</analysis><score>[1, 0]</score>", "<analysis> needs a list of 2 entries"),
    ("<analysis>'ab'</analysis><score>[1, 0]</score>", "got str"),
    ("<analysis>['a', 'b']</analysis><score>1</score>", "got int"),
])
def test_parser_rejects_malformed_and_wrong_length_answers(text, error):
    parsed = parse_judgement(text, 2)
    assert not parsed.ok and parsed.analysis == parsed.scores == ()
    assert error in parsed.error


def test_parser_uses_the_first_tags_as_upstream():
    text = ("<analysis>['a']</analysis><score>[0]</score>"
            "<analysis>['b']</analysis><score>[1]</score>")
    assert parse_judgement(text, 1).scores == (0,)


HAND_MADE = [
    # key, index, testpoints, scores (None = dropped)
    ("0_0.png", 0, ["Style", "Attribute - Color", "Attribute - Size"], [1, 0, 1]),
    ("0_1.png", 0, ["Style", "Attribute - Color", "Attribute - Size"], [1, 1, 1]),
    ("1_0.png", 1, ["Text Generation", "Entity Layout - Two-Dimensional Space"], [0, 1]),
    ("1_1.png", 1, ["Text Generation", "Entity Layout - Two-Dimensional Space"], None),
    ("2_0.png", 2, ["Style"], [0]),
    ("3_0.png", 3, ["Attribute - Color"], [0]),
]


def test_aggregation_of_a_hand_made_results_file(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text("".join(
        json.dumps({"key": k, "index": i, "image": 0, "testpoints": t, "scores": s,
                    "judge": "gemini-2.5-pro"}) + "\n" for k, i, t, s in HAND_MADE))
    s = aggregate(read_results(path))
    # Style: 1 + 1 + 0 of 3; Color: 0 + 1 + 0 of 3; Size: 1 + 1 of 2
    assert s.sub["Style"] == (2, 3, 2 / 3)
    assert s.sub["Attribute - Color"] == (1, 3, 1 / 3)
    assert s.sub["Attribute - Size"] == (2, 2, 1.0)
    # micro inside the primary: (1 + 2) / (3 + 2) = 0.6, not the sub mean (1/3 + 1) / 2
    assert s.primary["Attribute"] == (3, 5, 0.6)
    # the dropped 1_1 counts nowhere: Text 0/1 and Layout 1/1 (not 0/2 and 1/2)
    assert s.primary["Text"] == (0, 1, 0.0) and s.primary["Layout"] == (1, 1, 1.0)
    assert list(s.primary) == ["Style", "Attribute", "Layout", "Text"]
    # Overall = (2/3 + 0.6 + 1 + 0) / 4 = 0.5666...
    assert math.isclose(s.overall, (2 / 3 + 0.6 + 1.0 + 0.0) / 4)
    assert (s.n_judged, s.n_dropped, s.judges) == (5, 1, ("gemini-2.5-pro",))
    assert s.missing_primaries == ("World Knowledge", "Action", "Relation", "Compound",
                                   "Grammar", "Logical Reasoning")
    table = format_table({"base": s})
    header, rule, row = table.splitlines()[:3]
    assert header == "| model | " + " | ".join([*PRIMARY_DIMENSIONS, "Overall"]) + " |"
    assert rule.count("|---") == 12
    assert row == "| base | 66.67 | — | 60.00 | — | — | — | — | 100.00 | — | 0.00 | **56.67** |"
    assert "base: 5 judged images, 1 dropped; judge: gemini-2.5-pro." in table
    assert "Overall averages 4 columns" in table
    assert summary_to_dict(s)["primary_dimensions"]["Attribute"] == {
        "correct": 3, "total": 5, "accuracy": 0.6}


def test_score_equal_to_one_counts_and_chinese_names_map_to_english_columns():
    # 1, 1.0 and True equal 1; "1" and 2 do not (upstream `score == 1`)
    j = Judgement("a.png", 0, ("风格", "属性-颜色", "属性-颜色", "Style", "Style"),
                  (True, 1.0, "1", 2, 1), "")
    s = aggregate([j])
    assert s.primary["Style"] == (2, 3, 2 / 3) and s.sub["Attribute - Color"] == (1, 2, 0.5)
    assert s.judges == ()


def test_aggregation_errors():
    with pytest.raises(SlasError, match="no usable judgements"):
        aggregate([Judgement("a.png", 0, ("Style",), None, "")])
    with pytest.raises(SlasError, match="1 scores for 2 testpoints"):
        aggregate([Judgement("a.png", 0, ("Style", "Style"), (1,), "")])
    with pytest.raises(SlasError, match="unknown testpoint 'Colour'"):
        aggregate([Judgement("a.png", 0, ("Colour",), (1,), "")])

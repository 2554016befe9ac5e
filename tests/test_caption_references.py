"""Retrieval-augmented captioning (stage 2 with references): the reference set, the prompt that cites
it, provenance, the no-self / no-evaluated-molecule rules and the repetition guard."""

from __future__ import annotations

import pytest
import torch

from mvclam.engine.captioning import (
    IGNORE_INDEX,
    Captioner,
    CaptionerConfig,
    GenerationSettings,
    MoleculeCaptioner,
    molecule_query_states,
)
from mvclam.engine.captioning.backends import CaptionBackend
from mvclam.engine.captioning.decoding import (
    max_ngram_count,
    trim_name_loops,
    trim_repetition,
    trim_unfinished,
)
from mvclam.engine.captioning.model import PromptContext, prompt_contexts
from mvclam.engine.captioning.references import (
    Reference,
    ReferenceSet,
    ReferenceSetError,
    parse_table_reference,
    resolve_reference_set,
)
from mvclam.engine.models.config import load_config
from mvclam.engine.models.mvclam import MVCLAM
from mvclam.engine.views import collate_views, compute_views_batch

# (id, SMILES, description): two alcohols, two benzoic acids, a phenol
ROWS = [
    ("1", "CCO", "Ethanol is a primary alcohol."),
    ("2", "CCCO", "Propan-1-ol is a primary alcohol."),
    ("3", "OC(=O)c1ccccc1", "Benzoic acid is the simplest aromatic carboxylic acid."),
    ("4", "CC(=O)Oc1ccccc1C(=O)O", "Aspirin is a member of the class of benzoic acids."),
    ("5", "Oc1ccccc1", "Phenol is an aromatic alcohol."),
]


@pytest.fixture(scope="module")
def views():
    return [r.views for r in compute_views_batch([s for _, s, _ in ROWS])]


@pytest.fixture(scope="module")
def references(views) -> ReferenceSet:
    return ReferenceSet.from_rows(
        [i for i, _, _ in ROWS],
        [v.inchikey for v in views],
        [v.canonical_smiles for v in views],
        [d for *_, d in ROWS],
    )


# ----------------------------------------------------------------------------- the reference set
def test_one_entry_per_molecule_and_undescribed_rows_are_skipped(views):
    keys = [v.inchikey for v in views]
    smiles = [v.canonical_smiles for v in views]
    refs = ReferenceSet.from_rows(
        ["a", "b", "c", "d"], [keys[0], keys[0], keys[1], keys[2]], smiles[:1] * 2 + smiles[1:3],
        ["first", "second", "", "third"],
    )  # fmt: skip
    assert refs.ids == ["a", "d"] and refs.descriptions == ["first", "third"]
    with pytest.raises(ReferenceSetError, match="no described molecules"):
        ReferenceSet.from_rows(["a"], [keys[0]], smiles[:1], [None])


def test_nearest_is_best_first_and_never_the_molecule_itself(references, views):
    cited = references.nearest([v.canonical_smiles for v in views], [v.inchikey for v in views], k=2)
    for view, refs in zip(views, cited, strict=True):
        assert len(refs) == 2
        assert all(references.inchikeys[references.ids.index(r.id)] != view.inchikey for r in refs)
        assert refs[0].similarity >= refs[1].similarity
    assert cited[3][0].id == "3"  # aspirin's nearest described molecule is benzoic acid
    # a molecule outside the set may get any reference, itself not being there
    outside = references.nearest(["OC(=O)c1ccccc1O"], ["NOT-IN-SET"], k=1)
    assert outside[0][0].id in {"3", "4"} and 0 < outside[0][0].similarity < 1
    assert references.nearest(["CCO"], [views[0].inchikey], k=0) == [[]]
    assert len(references.nearest(["CCO"], [views[0].inchikey], k=50)[0]) == len(references) - 1


def test_without_removes_evaluated_molecules(references, views):
    evaluated = {views[2].inchikey, views[3].inchikey}
    subset = references.without(evaluated)
    assert len(subset) == 3 and not evaluated & set(subset.inchikeys)
    cited = subset.nearest([views[4].canonical_smiles], [views[4].inchikey], k=10)[0]
    assert {r.id for r in cited} == {"1", "2"}


def test_save_load_round_trip_and_version(references, tmp_path):
    references.save(tmp_path / "set")
    loaded = ReferenceSet.load(tmp_path / "set")
    assert (loaded.ids, loaded.descriptions, loaded.inchikeys) == (
        references.ids,
        references.descriptions,
        references.inchikeys,
    )
    assert loaded.version == references.version and len(references.version) == 12
    assert references.without([references.inchikeys[0]]).version != references.version
    assert parse_table_reference("s3://bucket/db/annotated") == ("s3://bucket/db", "annotated")
    with pytest.raises(ReferenceSetError, match="DB/TABLE"):
        parse_table_reference("annotated")
    assert resolve_reference_set("", tmp_path / "set") == tmp_path / "set"
    with pytest.raises(ReferenceSetError):
        resolve_reference_set("no-such-set")


def test_from_lance_reads_a_table_of_described_molecules(tmp_path, views):
    lancedb = pytest.importorskip("lancedb")
    import pyarrow as pa

    table = pa.table(
        {
            "id": ["x1", "x2"],
            "inchikey": [views[0].inchikey, views[3].inchikey],
            "canonical_smiles": [views[0].canonical_smiles, views[3].canonical_smiles],
            "description": ["An alcohol we sell.", None],
        }
    )
    lancedb.connect(str(tmp_path / "db")).create_table("annotated", table)
    refs = ReferenceSet.from_lance(str(tmp_path / "db"), "annotated")
    assert refs.ids == ["x1"] and refs.source.endswith("annotated")
    with pytest.raises(ReferenceSetError, match="lacks columns"):
        ReferenceSet.from_lance(str(tmp_path / "db"), "annotated", description_column="notes")


# ----------------------------------------------------------------------------- repetition guard
def test_trim_repetition_cuts_loops_and_keeps_normal_text():
    loop = "The molecule is a conjugate acid of a conjugate acid of a conjugate acid of a conjugate acid."
    trimmed = trim_repetition(loop)
    assert max_ngram_count(loop) == 3 and max_ngram_count(trimmed) <= 2
    assert loop.startswith(trimmed) and len(trimmed) < len(loop)
    sentences = "It is an alcohol. It is an alcohol. It is an alcohol. It is an alcohol."
    assert trim_repetition(sentences) == "It is an alcohol. It is an alcohol."  # cut at a sentence end
    normal = "Aspirin is a member of the class of benzoic acids. It has a role as an analgesic."
    assert trim_repetition(normal) == normal
    assert trim_repetition("a b c d a b c d", max_repeats=1) == "a b c d a b c"


def test_trim_name_loops_cuts_loops_inside_a_word():
    # loops of the first retrieval-augmented captioner on the test split
    looped = "The molecule is an alditol. It is a 1,3-dihydroxy-1,3-dihydroxy-1,3-dihydroxy-1,3-dihydr"
    assert trim_name_loops(looped) == "The molecule is an alditol."
    no_sentence = "The molecule is a 2-hydroxy-2-hydroxy-2-hydroxy-2-hydroxy-2"
    assert trim_name_loops(no_sentence) == "The molecule is a 2-hydroxy-2-hydroxy"  # two occurrences kept
    counting = "It is a dibenzofuran. It is a 1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,2"
    assert trim_name_loops(counting) == "It is a dibenzofuran."
    # real names repeat twice, and carry short locant lists: untouched
    for name in (
        "The molecule is beta-D-Glc-(1->3)-beta-D-Glc, a disaccharide.",
        "It is 1,1,2,2,3,3,4,4,5-nonafluoropentane and 2,3,4,5,6-pentahydroxyhexanal.",
        "Aspirin is a member of the class of benzoic acids.",
    ):
        assert trim_name_loops(name) == name


def test_trim_unfinished_ends_at_the_last_full_sentence():
    assert trim_unfinished("It is an alcohol. It has a role as a s") == "It is an alcohol."
    assert trim_unfinished("It is an alcohol.") == "It is an alcohol."
    assert trim_unfinished("no sentence end at all") == "no sentence end at all"


class _CannedBackend(CaptionBackend):
    """Returns fixed token ids, one word per id; id 0 is the end-of-turn token."""

    name = "canned"
    hidden_size = 4

    def __init__(self, rows: list[list[int]]):
        self.rows = rows
        self.tokenizer = type("Tokenizer", (), {"eos_token_id": 0})()

    def generate_ids(self, prompt_embeds, settings):
        return self.rows

    def decode(self, ids):
        words = {1: "It", 2: "is", 3: "an", 4: "alcohol.", 5: "acid"}
        return [" ".join(words[i] for i in row if i) for row in ids]


def test_generate_trims_only_captions_stopped_by_the_token_limit():
    rows = [[1, 2, 3, 4, 1, 2, 3, 5], [1, 2, 3, 4, 1, 2, 5, 0], [1, 2, 3, 4, 1, 2, 5]]
    backend = _CannedBackend(rows)
    captions = backend.generate([], GenerationSettings(max_new_tokens=8))
    # row 1 hit the limit mid-sentence; row 2 ended with end-of-turn; row 3 stopped early (EOS dropped)
    assert captions == ["It is an alcohol.", "It is an alcohol. It is acid", "It is an alcohol. It is acid"]
    untrimmed = backend.generate([], GenerationSettings(max_new_tokens=8, trim_unfinished=False))
    assert untrimmed[0] == "It is an alcohol. It is an acid"


# ----------------------------------------------------------------------------- prompts with context
@pytest.fixture(scope="module")
def mvclam() -> MVCLAM:
    torch.manual_seed(0)
    return MVCLAM(load_config("small")).eval()


@pytest.fixture(scope="module")
def rag_captioner(mvclam) -> MoleculeCaptioner:
    torch.manual_seed(0)
    config = CaptionerConfig.for_model(
        mvclam, smiles_chars=16, references=2, reference_tokens=5, lora_dropout=0.0
    )
    return MoleculeCaptioner(config).eval()


def test_context_prompt_cites_smiles_and_truncated_references(rag_captioner):
    context = PromptContext(
        smiles="CC(=O)Oc1ccccc1C(=O)O-and-more",
        references=(Reference("3", 0.5, "Benzoic acid is the simplest aromatic carboxylic acid."),) * 3,
    )
    text = rag_captioner.tokenizer.decode(rag_captioner.context_ids(context))
    assert "SMILES: CC(=O)Oc1ccccc1C\n" in text  # 16 characters
    assert text.count("(similarity 0.50)") == 2  # k = 2 of the 3 given
    assert "carboxylic acid" not in text  # each description cut to 5 tokens
    assert rag_captioner.context_ids(PromptContext()) == []


def test_prompts_differ_per_molecule_and_only_descriptions_are_labelled(
    rag_captioner, mvclam, views, references
):
    contexts = prompt_contexts(rag_captioner.config, views[:3], references)
    with torch.no_grad():
        query_states = molecule_query_states(mvclam, collate_views(views[:3]))
    prompts = rag_captioner.prompts(query_states, contexts)
    assert len({p.shape[0] for p in prompts}) > 1  # different SMILES and references
    assert max(p.shape[0] for p in prompts) <= rag_captioner.prompt_length  # the documented bound
    descriptions = [d for *_, d in ROWS[:3]]
    inputs = rag_captioner.build_training_inputs(query_states, descriptions, contexts=contexts)
    targets = rag_captioner.tokenize_descriptions(descriptions)
    for row, (prompt, target) in enumerate(zip(prompts, targets, strict=True)):
        labels = inputs.labels[row][inputs.attention_mask[row].bool()].tolist()
        assert labels == [IGNORE_INDEX] * prompt.shape[0] + target
    with pytest.raises(ValueError, match="PromptContext"):
        rag_captioner.prompts(query_states, None)
    with pytest.raises(ValueError, match="use prompts"):
        rag_captioner.prompt_embeds(query_states)
    loss = rag_captioner(query_states, descriptions, contexts)
    assert torch.isfinite(loss)


def test_references_without_soft_prompt_need_no_molecule_encoder(mvclam, views, references):
    torch.manual_seed(0)
    config = CaptionerConfig.for_model(mvclam, soft_prompt=False, references=1, reference_tokens=4)
    captioner = MoleculeCaptioner(config).eval()
    contexts = prompt_contexts(config, views[:2], references)
    prompts = captioner.prompts(None, contexts)
    assert all(p.shape[0] < config.num_query_tokens + 80 for p in prompts)
    with pytest.raises(ValueError, match="soft prompt, the SMILES or references"):
        CaptionerConfig.for_model(mvclam, soft_prompt=False)


def test_prompt_ablation_only_removes_trained_parts(mvclam):
    from mvclam.jobs.evaluate import ablated_prompt

    config = CaptionerConfig.for_model(mvclam, smiles_chars=64, references=2)
    ablated = ablated_prompt(config, ["soft_prompt=false", "references=0"])
    assert (ablated.soft_prompt, ablated.references, ablated.smiles_chars) == (False, 0, 64)
    assert (config.soft_prompt, config.references) == (True, 2)  # the loaded config is kept
    for bad, message in [
        (["references=3"], "exceeds the trained prompt"),
        (["soft_prompt=no"], "true or false"),
        (["lora_r=4"], "KEY one of"),
        (["soft_prompt=false", "references=0", "smiles_chars=0"], "soft prompt, the SMILES or references"),
    ]:
        with pytest.raises(SystemExit, match=message):
            ablated_prompt(config, bad)


def test_captions_record_their_references_and_never_cite_themselves(rag_captioner, mvclam, views, references):
    with pytest.raises(ValueError, match="ReferenceSet"):
        Captioner(mvclam, rag_captioner)
    captioning = Captioner(mvclam, rag_captioner, batch_size=2, references=references)
    results = captioning.describe_views(views, GenerationSettings(max_new_tokens=3))
    for view, result in zip(views, results, strict=True):
        assert result.ok and len(result.references) == 2
        own_ids = {references.ids[references.inchikeys.index(view.inchikey)]}
        assert not own_ids & {r["id"] for r in result.provenance()}
    assert results[3].references[0].id == "3"  # aspirin cites benzoic acid first
    assert captioning.caption_views(views[:1], GenerationSettings(max_new_tokens=3)) == [results[0].caption]

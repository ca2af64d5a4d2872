"""The data side: pure pieces first, the Ray edges (prepare, ingest) on top of them.

schema.py           SocSci210's Arrow schema, row validation and the quarantine reasons
prompts.py          the persona block, chat messages and answer-scale parsing
splits.py           the split settings (unseen studies / conditions / tasks, all_settings), from files or a seed
raw_source.py       raw shards, local or fsspec: column checks, metadata files, the key pass
prepare.py          `socrates-ray prepare`: validate, quarantine, split (one Ray task per shard, all or nothing)
prepare_summary.py  prepare's counts and the lines it prints
prepared.py         a prepared folder as later stages read it: which splits hold rows, and their rows
synthetic.py        the synthetic SocSci210 world: studies, people, answers with true distributions
synthetic_vocab.py  its topics, frames, question wordings, answer scales, personas and effect sizes
synthetic_files.py  a synthetic dataset written in SocSci210's layout, with its ground truth
tokenize.py         encoding (loss on the answer tokens only), rows, collate, the packed attention mask
packing.py          which examples share a packed row
ingest.py           the Ray Data ingest graph (read -> tokenize in an actor pool -> pack)
ingest_stats.py     ingest measured as the workers see it (tokens/s, padding, samples left out)
progress.py         about ten progress lines for a long job
"""

"""Data: long documents streamed piece by piece, synthetic tasks, real-data readers, Grain pipelines.

Modules (import them directly; this package imports nothing so `import memagent_jax.data` stays cheap):
  document   Sample, Document (lazy, piece-wise; iter_text / iter_tokens), TextDocument, Span
  tasks      make_task(name, tokenizer, target_tokens, key_split=): RULER's task definitions (niah_*, vt*) and
             multihop_qa; keys from a training or an evaluation half of RULER's vocabulary (words)
  niah, vt, multihop   the generators; synthetic: base class, SyntheticSource (Grain source)
  haystack, length     lazy haystack documents (RULER's filler line); token-length planning (exact or calibrated)
  readers, parquet     JSONL / JSON-array / Parquet sources of MemAgent and RULER records (open_source)
  record_source   their base: format parsing, the bad-record policy, skip accounting
  records, writers     record formats <-> Sample; MemAgent-format writers (JSONL streamed, Parquet), atomic
  hotpotqa   RULER-HQA builder from a local HotpotQA dev file (scripts/fetch_hotpotqa.sh)
  hotpotqa_train, heldout   MemAgent's HotpotQA training Parquet; the held-out evaluation questions
  squad, ruler_qa   SQuAD loader (scripts/fetch_squad.sh); RULER's qa_1/qa_2 at any length, RULER's format
  pool       contexts drawn from a paragraph pool (own paragraphs + distractors, numbered documents)
  sources, mixture     a phase's config.<phase>.sources: file globs and synthetic tasks mixed by weight
  pipeline   make_pipeline: shuffle -> per-process shard -> tokenize -> batch -> prefetch (checkpointable)
  export     command line: write synthetic tasks in MemAgent's training/evaluation format
  words      RULER's adjective and noun lists (wonderwords), split by word between training and evaluation
  task_corpus   tokenizer training text (every training word, the tasks' lines, the agent's templates)
  errors     RecordError, skip accounting
"""

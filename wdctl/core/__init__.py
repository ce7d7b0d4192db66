"""The foundation every other layer stands on: errors, atomic writes, corpus reading, BLEU
scoring, run info. It imports nothing else of wdctl."""

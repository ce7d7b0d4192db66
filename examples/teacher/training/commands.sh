# 1. train (resumes from runs/teacher6/model.run when rerun; --max-minutes counts training time only)
wdctl teacher train --data examples/data/bible --out runs/teacher6/model --preset cpu6 --threads 2 --max-minutes 122
# 2. ship: fp16 weights + tokenizer + these files
python examples/ship_teacher.py runs/teacher6/model examples/teacher

"""What keeps an answer when the database cannot take it now.

Answers are written in one transaction per run, batched with others ending
at the same moment (`group_commit`); a live run is checkpointed and an
answer the database refused is kept on local disk (`spool`, `spool_layout`)
and written later, and what a stopped process left behind is recovered at
start (`journal`).
"""

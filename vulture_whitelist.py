"""Names vulture (`make lint`) would call unused that a library's hook signature requires.

Only framework hooks belong here: a name the code itself could drop is dead code, and goes.
vulture reads this file without running it; each line "uses" a name.
"""
# aiocache's BaseCache hooks (store/cache_backend.py, store/memory_cache.py): aiocache passes
# `encoding=` by keyword; our backends store bytes as they come.
encoding  # noqa
# memcachio's Command.parse(data, endpoint) (store/memcached.py): one reply parser serves
# every server.
endpoint  # noqa

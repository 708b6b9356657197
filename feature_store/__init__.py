"""Feature views (declared, versioned) and the offline store that reads and writes them.

Import the submodules directly: ``views`` needs no Spark; ``offline_store``, ``transforms`` and
``pipeline`` work on Spark DataFrames.
"""

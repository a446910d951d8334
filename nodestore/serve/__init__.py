"""The node to the world: a read-only OPTIMADE API of a node at a commit (``optimade``), and the
structures of any OPTIMADE provider into a node (``client``).

Above loop, repo, chem and frames; below the CLI.  optimade-python-tools supplies the filter grammar and
parser, the response models and the FastAPI server; this layer supplies one entry collection that
answers filters with masks over the node's columnar table (no second database); ``page``
serves a page beside the API at ``/nodestore/``.
"""

"""Imported last by the workers' forkserver, after the modules it preloads: moves every object
made so far into the GC's permanent generation. The workers forked from it share those pages
with it; a collection in a worker that walked them would write to each object's GC header and
so copy nearly every page (copy-on-write). Frozen objects are never walked."""

import gc

gc.freeze()

"""Building MetaCLIP-style metadata lists (the ``metadata`` stage; see ``curation.stages.metadata``).

MetaCLIP's list (Xu et al. 2023, "Demystifying CLIP Data", ``metaclip/build_metadata.py``) is the
strings "0"–"99", WordNet synset head names, Wikipedia unigrams seen ≥ 100 times, Wikipedia bigrams
with PMI ≥ 30 and Wikipedia titles with ≥ 70 page views; MetaCLIP 2 builds one list per language
with caps. The parts:

- :mod:`.wordnet`: synset head names from the WordNet 3.0 ``data.*`` files, MetaCLIP's exact rule;
- :mod:`.tokenize`: the corpus tokeniser (what a matchable unigram/bigram is, no-space scripts);
- :mod:`.corpus`: Spark counting of unigrams, bigrams and bigram PMI (in bits), per language;
- :mod:`.titles`: titles with summed views;
- :mod:`.assemble`: merging, ordering, caps, hygiene, provenance;
- :mod:`.build`: reading the configured sources and merging them.
"""

from curation.metadata_build.assemble import Candidate, ListBuilder, entry_problem
from curation.metadata_build.build import BuildResult, BuildRules, Sources, build_metadata
from curation.metadata_build.tokenize import count_ngrams, tokenize
from curation.metadata_build.wordnet import metaclip_head_name, read_wordnet

__all__ = [
    "BuildResult",
    "BuildRules",
    "Candidate",
    "ListBuilder",
    "Sources",
    "build_metadata",
    "count_ngrams",
    "entry_problem",
    "metaclip_head_name",
    "read_wordnet",
    "tokenize",
]

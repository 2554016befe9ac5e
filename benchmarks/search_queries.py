"""The sentences every search benchmark embeds as queries (one list, so their numbers compare)."""

QUERIES = [
    "a beta-lactam antibiotic active against gram-negative bacteria",
    "an aromatic carboxylic acid",
    "a steroid hormone",
    "a sulfonamide antibacterial drug",
    "a tertiary amine with a piperazine ring",
    "a benzodiazepine with anxiolytic activity",
    "a flavonoid with antioxidant properties",
    "a nucleoside analogue antiviral",
    "an alkaloid isolated from plants",
    "a fatty acid with a long aliphatic chain",
    "a kinase inhibitor containing a pyrimidine",
    "an organochlorine pesticide",
    "a peptide containing cysteine residues",
    "a monosaccharide in its pyranose form",
    "an ester used as a fragrance",
    "a heterocyclic compound with a thiophene ring",
]

# Block-level sparse attention tests (issue 4): block masks, block_sparse_attention, static
# patterns, selectors, accuracy tools.
attend_add_test(test_sparse_block_sparse SOURCES test_block_sparse.cpp
                ARCHS ${KERNEL_ARCHS})

# Block-level sparse attention tests (issue 4): block masks, block_sparse_attention, static
# patterns, selectors, accuracy tools.
attend_add_test(test_sparse_block_sparse SOURCES test_block_sparse.cpp
                ARCHS ${FAMILY_ARCHS})
attend_add_test(test_sparse_block_mask SOURCES test_block_mask.cpp)
attend_add_test(test_sparse_patterns SOURCES test_patterns.cpp ARCHS ${FAMILY_ARCHS})
attend_add_test(test_sparse_select_common SOURCES test_select_common.cpp ARCHS ${FAMILY_ARCHS})
attend_add_test(test_sparse_quest SOURCES test_quest.cpp ARCHS ${FAMILY_ARCHS})
attend_add_test(test_sparse_selectors
                SOURCES test_moba.cpp test_flexprefill.cpp test_minference.cpp test_proxy.cpp
                        test_lowbit.cpp
                ARCHS ${FAMILY_ARCHS})
attend_add_test(test_sparse_accuracy SOURCES test_accuracy.cpp ARCHS ${FAMILY_ARCHS})

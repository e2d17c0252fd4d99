/* Exported entry points of the traced functions.  Each symbol starts with the single 5-byte nop
 * 0f 1f 44 00 00 (the kernel optimizes uprobes placed on it) and tail-jumps to the hidden C
 * implementation, so at the symbol address %rsp still points at the caller's return address and
 * both uprobes and uretprobes work.  GCC's -fpatchable-function-entry emits five 1-byte nops, which the
 * kernel does not optimize, hence the hand-written stubs.  The CFI brackets give unwinders the
 * default x86-64 entry state (CFA = rsp + 8). */

#define NA_ENTRY(name)                      \
    .globl name;                            \
    .type name, @function;                  \
    .p2align 4;                             \
name:                                       \
    .cfi_startproc;                         \
    .byte 0x0f, 0x1f, 0x44, 0x00, 0x00;     \
    jmp name##_impl;                        \
    .cfi_endproc;                           \
    .size name, .-name

/* Hidden alias so internal slow paths reach the probed address without a PLT hop. */
#define NA_ALIAS(alias, name)               \
    .globl alias;                           \
    .hidden alias;                          \
    .type alias, @function;                 \
    .set alias, name

    .text
NA_ENTRY(na_alloc)
NA_ENTRY(na_free)
NA_ENTRY(na_alloc_batch)
NA_ENTRY(na_consolidate)
NA_ENTRY(na_reset)
NA_ENTRY(na_grow)
NA_ENTRY(na_lock_wait)

NA_ALIAS(na__alloc_batch_entry, na_alloc_batch)
NA_ALIAS(na__grow_entry, na_grow)
NA_ALIAS(na__lock_wait_entry, na_lock_wait)

    .section .note.GNU-stack, "", @progbits

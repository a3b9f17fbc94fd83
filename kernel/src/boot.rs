//! Entry point and the ELF notes Xen's generic PV loader needs.
//!
//! Xen starts a 64-bit PV guest in (ring 3) kernel mode with paging on, the
//! image mapped at VIRT_BASE, `%rsi` pointing at the start_info page and event
//! upcalls masked. We switch to our own stack and call into Rust.
//! Only the unikernel binaries link this; host tests never see it.

core::arch::global_asm!(
    r#"
    .macro note_head type
    .pushsection .note.Xen, "a", @note
    .balign 4
    .long 4
    .long 2f - 1f
    .long \type
    .asciz "Xen"
    .balign 4
    .endm
    .macro note_str type, value
    note_head \type
1:  .asciz "\value"
2:  .balign 4
    .popsection
    .endm
    .macro note_quad type, value
    note_head \type
1:  .quad \value
2:  .balign 4
    .popsection
    .endm

    /* Numbers from xen/include/public/elfnote.h */
    note_str 6, "Miniproxy"      /* GUEST_OS */
    note_str 7, "0.1"            /* GUEST_VERSION */
    note_str 5, "xen-3.0"        /* XEN_VERSION: required */
    note_str 8, "generic"        /* LOADER: required with XEN_VERSION */
    note_quad 3, 0                 /* VIRT_BASE */
    note_quad 4, 0                 /* PADDR_OFFSET */
    note_quad 1, _start            /* ENTRY */
    note_quad 2, hypercall_page    /* HYPERCALL_PAGE */

    /* Page 0: a guard page, unmapped once we run. */
    .pushsection .text.guard, "ax"
    .fill 4096, 1, 0
    .popsection

    .pushsection .text.boot, "ax"
    .globl _start
_start:
    cld
    mov %rsi, %rdi          /* arg 1: start_info */
    rdtsc                   /* arg 2: TSC at our first instruction */
    shl $32, %rdx
    or %rdx, %rax
    mov %rax, %rsi
    lea boot_stack_top(%rip), %rsp
    xor %ebp, %ebp
    call kernel_entry
1:  ud2
    jmp 1b
    .popsection

    .pushsection .bss.boot_stack, "aw", @nobits
    .balign 4096
boot_stack:
    .skip 128 * 1024
boot_stack_top:
    .popsection
"#,
    options(att_syntax)
);

extern "C" {
    static boot_stack: u8;
    static boot_stack_top: u8;
}

/// The boot stack's bounds, for the register dump and the memory report.
pub fn stack_bounds() -> (usize, usize) {
    // Only the addresses of the linker-placed symbols are taken.
    (core::ptr::addr_of!(boot_stack) as usize, core::ptr::addr_of!(boot_stack_top) as usize)
}

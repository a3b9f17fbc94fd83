# pvhello: the smallest useful Xen PV guest, for the test bed's own smoke test (it lets
# tests/xen/00-smoke.sh exercise xl create/destroy, vif hotplug and console capture
# before our kernel exists). It writes one line to its PV console ring, notifies
# xenconsoled, then sleeps in SCHEDOP_poll until destroyed.
# Built by scripts/testbed-run with: as + ld -T pvhello.ld; lands in dom0 as
# /root/testbed/pvhello.elf. Linked at virtual address 0 (VIRT_BASE 0).

# ELF note in the "Xen" namespace: ELFNOTE type, directive, value
.macro ELFNOTE type, dir, val:vararg
    .balign 4
    .long 2f - 1f, 4f - 3f, \type
1:  .asciz "Xen"
2:  .balign 4
3:  \dir \val
4:  .balign 4
.endm

    .section .note.Xen, "a", @note
    ELFNOTE 6, .asciz, "pvhello"        # GUEST_OS
    ELFNOTE 5, .asciz, "xen-3.0"        # XEN_VERSION (required)
    ELFNOTE 8, .asciz, "generic"        # LOADER (required unless GUEST_OS is linux)
    ELFNOTE 3, .quad, 0                 # VIRT_BASE
    ELFNOTE 4, .quad, 0                 # PADDR_OFFSET
    ELFNOTE 1, .quad, _start            # ENTRY

    .text
    .globl _start
_start:                                 # %rsi = start_info (virtual address)
    lea     stack_top(%rip), %rsp
    mov     %rsi, %r12
    mov     72(%r12), %rax              # start_info.console.domU.mfn
    movabs  $0xffff800000000000, %rbx   # read-only machine-to-phys table
    mov     (%rbx,%rax,8), %r13         # pfn of the console ring page
    shl     $12, %r13                   # its virtual address (VIRT_BASE 0)
    mov     3084(%r13), %ecx            # xencons_interface.out_prod
    lea     msg(%rip), %rsi
    mov     $msg_end - msg, %edx
1:  mov     %ecx, %eax
    and     $2047, %eax                 # out[] has 2048 bytes, at offset 1024
    movzbl  (%rsi), %r8d
    mov     %r8b, 1024(%r13,%rax)
    inc     %rsi
    inc     %ecx
    dec     %edx
    jnz     1b
    sfence                              # ring data before the producer index
    mov     %ecx, 3084(%r13)
    mov     80(%r12), %eax              # start_info.console.domU.evtchn
    mov     %eax, send_port(%rip)
    mov     $32, %eax                   # HYPERVISOR_event_channel_op
    mov     $4, %edi                    # EVTCHNOP_send
    lea     send_port(%rip), %rsi
    syscall                             # inline 64-bit PV hypercall (clobbers rcx, r11)
2:  mov     $29, %eax                   # HYPERVISOR_sched_op
    mov     $3, %edi                    # SCHEDOP_poll, no ports, no timeout: sleep
    lea     poll_args(%rip), %rsi       # (events are masked, so nothing is delivered)
    syscall
    jmp     2b

    .section .rodata
msg:    .ascii "PVHELLO from the testbed guest\r\n"
msg_end:

    .data
    .balign 8
send_port: .long 0, 0                   # struct evtchn_send
poll_args: .quad 0, 0, 0                # struct sched_poll {ports, nr_ports, timeout}

    .bss
    .balign 16
    .space 4096
stack_top:

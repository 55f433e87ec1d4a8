/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * suture.h: what a livepatch source patch may use beyond plain C.
 *
 * `suture build` puts this file on the include path of the objects it
 * compiles, so a patch writes `#include <suture.h>`. Every macro here only
 * records something in a `.suture.*` section of the patched object; the
 * differ reads those sections and leaves them out of the patch module:
 *
 *   .suture.callbacks.{pre,post}_{patch,unpatch}  a pointer to the callback
 *   .suture.ignore.functions                      a pointer to the function
 *   .suture.ignore.sections                       a pointer to the section name
 *   .suture.force_unsafe                          a pointer to the function
 *
 * Callbacks belong to the klp_object of the translation unit they are written
 * in: vmlinux for a vmlinux file, the module for a module's file. The kernel
 * runs a module's callbacks when that module is patched, which is also when it
 * loads after the patch. At most one callback of each kind per object.
 * See docs/patch-author-guide.md.
 */
#ifndef _SUTURE_H
#define _SUTURE_H

#include <linux/compiler.h>
#include <linux/livepatch.h>

/* __typeof__ lets a function pointer type be written before the name. */
#define __SUTURE_CALLBACK(kind, type, fn)					\
	static __typeof__(type) __suture_cb_##kind##_##fn			\
	__used __section(".suture.callbacks." #kind) = fn

/*
 * int fn(struct klp_object *obj): runs before the object's functions are
 * redirected. A non-zero return (a -errno) aborts the load: the module is
 * not loaded, nothing is patched, and post-patch/unpatch callbacks do not run.
 */
#define SUTURE_PRE_PATCH_CALLBACK(fn)						\
	__SUTURE_CALLBACK(pre_patch, int (*)(struct klp_object *), fn)

/* void fn(struct klp_object *obj): runs once every task runs patched code. */
#define SUTURE_POST_PATCH_CALLBACK(fn)						\
	__SUTURE_CALLBACK(post_patch, void (*)(struct klp_object *), fn)

/* void fn(struct klp_object *obj): runs before the patch starts to go away. */
#define SUTURE_PRE_UNPATCH_CALLBACK(fn)						\
	__SUTURE_CALLBACK(pre_unpatch, void (*)(struct klp_object *), fn)

/* void fn(struct klp_object *obj): runs once no task runs patched code. */
#define SUTURE_POST_UNPATCH_CALLBACK(fn)					\
	__SUTURE_CALLBACK(post_unpatch, void (*)(struct klp_object *), fn)

/*
 * Leave this function out of the patch even though it changed (for example a
 * different inlining decision the source change caused, not a change of
 * behaviour). The differ prints a warning naming it.
 */
#define SUTURE_IGNORE_FUNCTION(fn)						\
	static void *__suture_ignore_func_##fn					\
	__used __section(".suture.ignore.functions") = (void *)(fn)

/* Leave every change in the named section out of the patch. */
#define SUTURE_IGNORE_SECTION(name)						\
	static const char *__UNIQUE_ID(__suture_ignore_section_)		\
	__used __section(".suture.ignore.sections") = (name)

/*
 * Include this function although the differ refuses its change (for example
 * it stopped using a static local variable, or its data changed). Each
 * refusal about it becomes a warning in the build output: the author takes
 * responsibility for the running kernel's state staying consistent.
 */
#define SUTURE_FORCE_UNSAFE(fn)							\
	static void *__suture_force_unsafe_##fn					\
	__used __section(".suture.force_unsafe") = (void *)(fn)

/*
 * SUTURE_SYSCALL_DEFINEn(name, type1, arg1, ...): use instead of
 * SYSCALL_DEFINEn to patch a system call's body.
 *
 * Why: SYSCALL_DEFINEn puts the body into `static inline long
 * __do_sys_NAME()`, and the kernel's `inline` implies `notrace`. When gcc
 * keeps that function out of line (as it does for newuname in 6.1), the
 * changed function has no ftrace hook and cannot be redirected, so the differ
 * refuses the patch. These macros re-create the same wrappers, with the same
 * metadata, around a renamed, out-of-line inner function: that function is new
 * in the patch (it needs no hook), and what changes in the running kernel are
 * the traced entry points `__x64_sys_NAME` and `__ia32_sys_NAME`, which call it.
 * ALLOW_ERROR_INJECTION is left out: the entry points of the patch are not the
 * kernel's error-injection sites (and Debian's 6.1 builds without it).
 */
#if defined(CONFIG_X86_64)
#include <linux/syscalls.h>

#define SUTURE_SYSCALL_DEFINE0(sname)						\
	SYSCALL_METADATA(_##sname, 0);						\
	static noinline long __suture_do_sys_##sname(void);			\
	long __x64_sys_##sname(const struct pt_regs *__unused);			\
	long __x64_sys_##sname(const struct pt_regs *__unused)			\
	{									\
		return __suture_do_sys_##sname();				\
	}									\
	__SUTURE_IA32_SYS_STUB0(sname)						\
	static noinline long __suture_do_sys_##sname(void)

#define SUTURE_SYSCALL_DEFINE1(name, ...) SUTURE_SYSCALL_DEFINEx(1, _##name, __VA_ARGS__)
#define SUTURE_SYSCALL_DEFINE2(name, ...) SUTURE_SYSCALL_DEFINEx(2, _##name, __VA_ARGS__)
#define SUTURE_SYSCALL_DEFINE3(name, ...) SUTURE_SYSCALL_DEFINEx(3, _##name, __VA_ARGS__)
#define SUTURE_SYSCALL_DEFINE4(name, ...) SUTURE_SYSCALL_DEFINEx(4, _##name, __VA_ARGS__)
#define SUTURE_SYSCALL_DEFINE5(name, ...) SUTURE_SYSCALL_DEFINEx(5, _##name, __VA_ARGS__)
#define SUTURE_SYSCALL_DEFINE6(name, ...) SUTURE_SYSCALL_DEFINEx(6, _##name, __VA_ARGS__)

#define SUTURE_SYSCALL_DEFINEx(x, sname, ...)					\
	SYSCALL_METADATA(sname, x, __VA_ARGS__)					\
	__SUTURE_SYSCALL_DEFINEx(x, sname, __VA_ARGS__)

#define __SUTURE_SYS_STUBx(abi, name, ...)					\
	long __##abi##_##name(const struct pt_regs *regs);			\
	long __##abi##_##name(const struct pt_regs *regs)			\
	{									\
		return __se_##name(__VA_ARGS__);				\
	}

#define __SUTURE_X64_SYS_STUBx(x, name, ...)					\
	__SUTURE_SYS_STUBx(x64, sys##name, SC_X86_64_REGS_TO_ARGS(x, __VA_ARGS__))

#ifdef CONFIG_IA32_EMULATION
#define __SUTURE_IA32_SYS_STUBx(x, name, ...)					\
	__SUTURE_SYS_STUBx(ia32, sys##name, SC_IA32_REGS_TO_ARGS(x, __VA_ARGS__))
#define __SUTURE_IA32_SYS_STUB0(sname)						\
	long __ia32_sys_##sname(const struct pt_regs *__unused);		\
	long __ia32_sys_##sname(const struct pt_regs *__unused)			\
	{									\
		return __suture_do_sys_##sname();				\
	}
#else
#define __SUTURE_IA32_SYS_STUBx(x, name, ...)
#define __SUTURE_IA32_SYS_STUB0(sname)
#endif

#define __SUTURE_SYSCALL_DEFINEx(x, name, ...)					\
	static long __se_sys##name(__MAP(x, __SC_LONG, __VA_ARGS__));		\
	static noinline long __suture_do_sys##name(__MAP(x, __SC_DECL, __VA_ARGS__)); \
	__SUTURE_X64_SYS_STUBx(x, name, __VA_ARGS__)				\
	__SUTURE_IA32_SYS_STUBx(x, name, __VA_ARGS__)				\
	static long __se_sys##name(__MAP(x, __SC_LONG, __VA_ARGS__))		\
	{									\
		long ret = __suture_do_sys##name(__MAP(x, __SC_CAST, __VA_ARGS__)); \
		__MAP(x, __SC_TEST, __VA_ARGS__);				\
		__PROTECT(x, ret, __MAP(x, __SC_ARGS, __VA_ARGS__));		\
		return ret;							\
	}									\
	static noinline long __suture_do_sys##name(__MAP(x, __SC_DECL, __VA_ARGS__))
#else
#define SUTURE_SYSCALL_DEFINEx(...) \
	_Static_assert(0, "SUTURE_SYSCALL_DEFINE* supports x86_64 kernels only")
#endif /* CONFIG_X86_64 */

#endif /* _SUTURE_H */

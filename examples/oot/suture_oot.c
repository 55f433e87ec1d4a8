// SPDX-License-Identifier: GPL-2.0
/*
 * A module built out of tree, for `suture build --module-src`: it shows one of
 * its static variables in /proc/suture_oot (writable as a module parameter, so
 * the compiler cannot fold it into a constant).
 */
#include <linux/module.h>
#include <linux/proc_fs.h>
#include <linux/seq_file.h>

static int answer = 42;
module_param(answer, int, 0644);

static int suture_oot_show(struct seq_file *m, void *v)
{
	seq_printf(m, "answer %d\n", answer);
	return 0;
}

static int __init suture_oot_init(void)
{
	if (!proc_create_single("suture_oot", 0444, NULL, suture_oot_show))
		return -ENOMEM;
	return 0;
}

static void __exit suture_oot_exit(void)
{
	remove_proc_entry("suture_oot", NULL);
}

module_init(suture_oot_init);
module_exit(suture_oot_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("suture example: an out-of-tree module");

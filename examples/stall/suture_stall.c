// SPDX-License-Identifier: GPL-2.0
/*
 * A module built out of tree whose kthread sleeps uninterruptibly in
 * suture_stall_wait() until the `release` parameter is set, then idles in
 * suture_stall_idle(). The kernel's fake signal only wakes interruptible
 * sleepers, so a livepatch replacing suture_stall_wait() cannot finish its
 * transition while the kthread is in there (issue 4's stalled transition).
 * /proc/suture_stall shows which code runs.
 */
#include <linux/module.h>
#include <linux/kthread.h>
#include <linux/wait.h>
#include <linux/sched.h>
#include <linux/proc_fs.h>
#include <linux/seq_file.h>

static DECLARE_WAIT_QUEUE_HEAD(wq);
static bool release_flag;
static struct task_struct *kt;

static int set_release(const char *val, const struct kernel_param *kp)
{
	int r = param_set_bool(val, kp);

	wake_up(&wq);
	return r;
}
static const struct kernel_param_ops release_ops = { .set = set_release, .get = param_get_bool, };
module_param_cb(release, &release_ops, &release_flag, 0644);

noinline void suture_stall_wait(void)
{
	wait_event(wq, READ_ONCE(release_flag) || kthread_should_stop());
}

noinline void suture_stall_idle(void)
{
	while (!kthread_should_stop())
		schedule_timeout_interruptible(HZ / 10);
}

static int suture_stall_fn(void *data)
{
	suture_stall_wait();
	suture_stall_idle();
	return 0;
}

static noinline int suture_stall_show(struct seq_file *m, void *v)
{
	seq_puts(m, "stall original\n");
	return 0;
}

static int __init suture_stall_init(void)
{
	if (!proc_create_single("suture_stall", 0444, NULL, suture_stall_show))
		return -ENOMEM;
	kt = kthread_run(suture_stall_fn, NULL, "suture_stall");
	if (IS_ERR(kt)) {
		remove_proc_entry("suture_stall", NULL);
		return PTR_ERR(kt);
	}
	return 0;
}

static void __exit suture_stall_exit(void)
{
	WRITE_ONCE(release_flag, true);
	kthread_stop(kt);
	remove_proc_entry("suture_stall", NULL);
}
module_init(suture_stall_init);
module_exit(suture_stall_exit);
MODULE_LICENSE("GPL");

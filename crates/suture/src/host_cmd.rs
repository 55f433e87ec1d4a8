#[derive(clap::Args)]
pub struct LoadArgs {}
#[derive(clap::Args)]
pub struct UnloadArgs {}
#[derive(clap::Args)]
pub struct ListArgs {}

pub fn load(_a: LoadArgs) -> anyhow::Result<i32> {
    anyhow::bail!("suture load: not yet implemented")
}
pub fn unload(_a: UnloadArgs) -> anyhow::Result<i32> {
    anyhow::bail!("suture unload: not yet implemented")
}
pub fn list(_a: ListArgs) -> anyhow::Result<i32> {
    anyhow::bail!("suture list: not yet implemented")
}

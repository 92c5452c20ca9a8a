# Disk layout of the aarch64 appliance (Raspberry Pi 4/5 and other boards booting with extlinux) as the
# sd-card image lays it out, so that `nixos-rebuild switch --flake .#appliance-aarch64` on a running
# board keeps booting. Defaults only: the sd-card image builder sets the same values itself.
{ lib, ... }:

{
  fileSystems."/" = lib.mkDefault {
    device = "/dev/disk/by-label/NIXOS_SD";
    fsType = "ext4";
  };
  boot.loader.grub.enable = false;
  boot.loader.generic-extlinux-compatible.enable = lib.mkDefault true;

  # nixpkgs' aarch64 sd-card module brings the installer's base profile, which turns ZFS on (and with it
  # a kernel module that must match the kernel, and the forceImportRoot warning). The appliance has one
  # ext4 root: the image goes without, as the installed system does — as nixpkgs' own no-zfs sd image.
  image.modules.sd-card = {
    boot.supportedFilesystems.zfs = lib.mkForce false;
  };
}
